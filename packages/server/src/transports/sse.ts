/**
 * Server-Sent Events (connection type `eventsource`, as the Faye client uses it): `GET
 * <mount>/<clientId>` with `Accept: text/event-stream`. Each batch is one event whose data is a
 * JSON array and whose id counts events on the stream; idle lines get a `heartbeat` event; `retry:` tells
 * EventSource how long to wait before reconnecting. Works with a plain browser EventSource too.
 */
import { sseEvent, sseRetry } from '@perihelion/protocol';
import type { Framer } from './stream.js';

/** Reconnection delay advised to EventSource (Faye's server sends the same). */
const RETRY_MS = 5000;

const HEARTBEAT = sseEvent('[]', { event: 'heartbeat' });

export const sseFramer: Framer = {
  transport: 'eventsource',
  contentType: 'text/event-stream; charset=utf-8',
  // A named event: it is not a message, so EventSource.onmessage (Faye parses every message as
  // Bayeux) never sees it; clients that care listen for "connected" to know the line is live, and
  // learn how long it may stay silent before it is to be taken for dead.
  opening: (session, heartbeat) => sseRetry(RETRY_MS) + sseEvent(JSON.stringify({ clientId: session.id, heartbeat }), { event: 'connected' }),
  padding: (bytes) => `:${' '.repeat(Math.max(0, bytes - 3))}\n\n`,
  batch: (json, sequence) => sseEvent(json, { id: sequence }),
  // A named event rather than a comment: a comment keeps proxies from cutting the line but never
  // reaches EventSource listeners, so a client could not tell an idle line from a silent, dead one
  // (a proxy that stops forwarding without closing). Named, so onmessage (Faye) never sees it; its
  // data is not empty, since EventSource dispatches no event whose data is empty.
  heartbeat: () => HEARTBEAT,
};
