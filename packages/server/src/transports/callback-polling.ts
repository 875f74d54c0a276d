/**
 * callback-polling (JSONP, Bayeux §callback-polling): `GET <mount>?message=<json>&jsonp=<name>`,
 * answered with JavaScript that calls `<name>` with the reply array. Browsers load it with a
 * <script> tag, so it works across origins without CORS — which is why it is off unless the
 * `jsonp` option enables it: any page can make a user's browser run it with the user's cookies.
 * Off, it still answers the pages of the allowed origins (http/cors.ts referrerAllowed).
 *
 * The callback name is checked against a strict identifier pattern and never reflected when it
 * fails. Like CometD, messages are delivered only through /meta/connect on this transport.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { DEFAULT_JSONP_CALLBACK, bayeuxError, encodeBatch, isValidCallback, jsonpWrap } from '@perihelion/protocol';
import type { TransportHost } from '../core/contract.js';
import { decodeTexts, pollOnce, type PollFailed } from './long-polling.js';

/** Answers one callback-polling request; `failed` as for handleLongPolling. */
export async function handleCallbackPolling(core: TransportHost, req: IncomingMessage, res: ServerResponse, failed: PollFailed): Promise<void> {
  const query = new URL(req.url ?? '/', 'http://localhost').searchParams;
  const callback = query.get('jsonp') ?? DEFAULT_JSONP_CALLBACK;
  if (!isValidCallback(callback)) {
    res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff' });
    res.end('invalid jsonp callback name: use letters, digits, _ and $ (dotted paths allowed), at most 64 characters\n');
    return;
  }
  const answer = (serialised: readonly string[]): void => {
    const body = jsonpWrap(callback, encodeBatch(serialised));
    // A script that fails to load tells the page nothing, so errors travel as 200 + Bayeux error.
    res.writeHead(200, {
      'Content-Type': 'text/javascript; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-cache, no-store',
      'X-Content-Type-Options': 'nosniff',
      'Content-Disposition': 'attachment; filename=f.txt',
    });
    res.end(body);
  };
  const texts = query.getAll('message');
  if (texts.length === 0) {
    return answer([JSON.stringify({ channel: '/meta/unknown', successful: false, error: bayeuxError('missingParameter', ['message']) })]);
  }
  const totalLength = texts.reduce((sum, text) => sum + text.length, 0);
  const decoded =
    totalLength > core.options.maxRequestBytes
      ? ({ ok: false, status: 413, error: 'requestTooLarge', reason: `request exceeds the limit of ${core.options.maxRequestBytes} bytes` } as const)
      : decodeTexts(core, texts);
  if (!decoded.ok) {
    return answer([JSON.stringify({ channel: '/meta/unknown', successful: false, error: bayeuxError(decoded.error, [], decoded.reason) })]);
  }
  const polled = pollOnce(core, decoded.messages, req, res, 'callback-polling', answer, failed);
  if (polled instanceof Promise) await polled;
}
