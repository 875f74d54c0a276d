/**
 * Server-Sent Events (connection type `eventsource`, as the Faye client uses it): `GET
 * <mount>/<clientId>` with `Accept: text/event-stream`. Each batch is one event whose data is a
 * JSON array and whose id counts events on the stream; idle lines get a comment; `retry:` tells
 * EventSource how long to wait before reconnecting. Works with a plain browser EventSource too.
 */
import { sseComment, sseEvent, sseRetry } from '@perihelion/protocol';
import type { Framer } from './stream.js';

/** Reconnection delay advised to EventSource (Faye's server sends the same). */
const RETRY_MS = 5000;

export const sseFramer: Framer = {
  transport: 'eventsource',
  contentType: 'text/event-stream; charset=utf-8',
  // A named event: it is not a message, so EventSource.onmessage (Faye parses every message as
  // Bayeux) never sees it; clients that care listen for "connected" to know the line is live.
  opening: (session) => sseRetry(RETRY_MS) + sseEvent(JSON.stringify({ clientId: session.id }), { event: 'connected' }),
  padding: (bytes) => `:${' '.repeat(Math.max(0, bytes - 3))}\n\n`,
  batch: (json, sequence) => sseEvent(json, { id: sequence }),
  heartbeat: () => sseComment(),
};
