/**
 * Server-Sent Events (connection type `eventsource`, as the Faye client uses it): `GET
 * <mount>/<clientId>` with `Accept: text/event-stream`. Each batch is one event whose data is a
 * JSON array and whose id counts events on the stream; idle lines get a `heartbeat` event; `retry:` tells
 * EventSource how long to wait before reconnecting. Works with a plain browser EventSource too.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sseEvent, sseRetry } from '@perihelion/protocol';
import type { Framer } from './stream.js';

/** Reconnection delay advised to EventSource (Faye's server sends the same). */
const RETRY_MS = 5000;

/**
 * The id of the last event of a stream whose session is gone (refused, or ended for good): an
 * EventSource that reconnects after it sends it back as `Last-Event-ID`, and is told to stop.
 */
const GONE_EVENT_ID = 'gone';

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
  comeBackIn: (ms) => sseRetry(ms),
  // With the id an EventSource that reconnects after it sends back, and is told 204 (refuseStream).
  farewell: (json) => sseEvent(json, { id: GONE_EVENT_ID }),
};

/**
 * Answers an EventSource whose session this server does not know (a restart, an expiry): with
 * the refusal in the stream, not a 404. EventSource reconnects by itself when its stream ends,
 * and on a 404 it stops for good and tells the page nothing: Faye then waits for its next
 * keep-alive connect, `timeout` later (measured: 30 s to come back after a restart). As one event
 * of a 200 stream, the refusal reaches the client like any reply, and its advice (handshake)
 * brings it back at once. The event carries an id, so that if the EventSource reconnects all the
 * same, its `Last-Event-ID` names it and it is answered 204, which stops it: the page's client
 * has its answer already, and an EventSource left open must not make it handshake every few
 * seconds.
 */
export function refuseStream(req: IncomingMessage, res: ServerResponse, refusal: string): void {
  if (req.headers['last-event-id'] === GONE_EVENT_ID) return void res.writeHead(204, { 'Cache-Control': 'no-cache, no-store' }).end();
  res.writeHead(200, { 'Content-Type': sseFramer.contentType, 'Cache-Control': 'no-cache, no-store, no-transform', 'X-Accel-Buffering': 'no' });
  res.end(sseRetry(RETRY_MS) + sseEvent(refusal, { id: GONE_EVENT_ID }));
}
