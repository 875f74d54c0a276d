import type { ServerResponse } from 'node:http';
import { bayeuxError } from '@perihelion/protocol';

/**
 * An HTTP error whose body is still a Bayeux JSON array, because Faye's Node client reads
 * any response as JSON and CometD reports the body to the application.
 */
export function sendBatchError(res: ServerResponse, status: 400 | 403 | 404 | 405 | 413, reason: string): void {
  if (res.headersSent) return;
  const name = status === 413 ? 'messageTooLarge' : status === 403 ? 'forbidden' : status === 405 ? 'methodNotAllowed' : 'badRequest';
  const body = JSON.stringify([{ channel: '/meta/unknown', successful: false, error: bayeuxError(name, [], reason) }]);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-cache, no-store',
  });
  res.end(body);
}
