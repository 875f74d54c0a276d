import type { ServerResponse } from 'node:http';
import { bayeuxError, type ErrorName } from '@perihelion/protocol';

/**
 * An HTTP error whose body is still a Bayeux JSON array, because Faye's Node client reads
 * any response as JSON and CometD reports the body to the application.
 */
export function sendBatchError(res: ServerResponse, status: 400 | 403 | 404 | 405 | 413 | 429, error: ErrorName, reason: string): void {
  if (res.headersSent) return;
  const body = JSON.stringify([{ channel: '/meta/unknown', successful: false, error: bayeuxError(error, [], reason) }]);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-cache, no-store',
  });
  res.end(body);
}
