/**
 * long-polling (and Faye's cross-origin-long-polling): the client POSTs a JSON array of
 * messages; the response is the JSON array of replies. A lone /meta/connect is held until a
 * message is due or advice.timeout passes, and then carries the queued messages.
 *
 * Bodies: `application/json` (CometD, Faye XHR and Node), or form-encoded `message=<json>`
 * (Bayeux §long-polling; Faye's CORS transport posts it as text/plain).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { decodeBatch, encodeBatch, type ConnectionType, type DecodeResult } from '@perihelion/protocol';
import type { TransportHost } from '../core/contract.js';
import { readBody } from '../http/body.js';
import { requestFacts } from '../http/request-facts.js';
import { sendBatchError } from '../http/responses.js';

const gzipAsync = promisify(gzip);

export async function handleLongPolling(core: TransportHost, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readBody(req, core.options.maxRequestBytes, core.options.bodyTimeout);
  if (!body.ok) {
    sendBatchError(res, body.status, body.error, body.reason);
    // Stop reading an oversized or stalled body instead of draining it.
    res.once('finish', () => req.destroy());
    return;
  }
  const texts = messageTexts(body.text, req.headers['content-type']);
  if (texts.length === 0) return sendBatchError(res, 400, 'missingParameter', 'the form body has no "message" parameter');
  const decoded = decodeTexts(core, texts);
  if (!decoded.ok) return sendBatchError(res, decoded.status, decoded.error, decoded.reason);
  const replies = await pollOnce(core, decoded.messages, req, res, 'long-polling');
  if (replies === null) return;
  await sendJsonAnswer(req, res, encodeBatch(replies), core.options.compressAbove);
}

/**
 * Writes a JSON answer; one larger than `compressAbove` bytes goes gzip-compressed to a client
 * that accepts it (compressed on the thread pool, not the event loop). Most answers are small and
 * go as they are: compressing them would cost more than it saves.
 */
async function sendJsonAnswer(req: IncomingMessage, res: ServerResponse, payload: string, compressAbove: number): Promise<void> {
  const headers: Record<string, string | number> = { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-cache, no-store' };
  let body: string | Buffer = payload;
  if (compressAbove > 0 && payload.length > compressAbove && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))) {
    body = await gzipAsync(payload, { level: 6 });
    headers['Content-Encoding'] = 'gzip';
    headers.Vary = 'Accept-Encoding';
    if (res.destroyed) return;
  }
  headers['Content-Length'] = Buffer.byteLength(body);
  res.writeHead(200, headers);
  res.end(body);
}

/**
 * Processes one polling request and resolves to its replies, or to null when the client left
 * before they were ready. Shared by long-polling and callback-polling.
 */
export async function pollOnce(
  core: TransportHost,
  messages: unknown[],
  req: IncomingMessage,
  res: ServerResponse,
  transport: ConnectionType,
): Promise<string[] | null> {
  const replies = await core.process(messages, {
    transport,
    request: requestFacts(req),
    // When the client closes the line before the answer, a held connect is let go without
    // taking the queued messages with it.
    onClientGone: (callback) =>
      res.once('close', () => {
        if (!res.writableFinished) callback();
      }),
  });
  return res.destroyed ? null : replies;
}

export type Decoded = DecodeResult;

/** Decodes one or more JSON texts (each a message or an array) into one batch, within the limits. */
export function decodeTexts(core: TransportHost, texts: readonly string[]): Decoded {
  const { maxBatch, maxDepth } = core.options;
  const messages: unknown[] = [];
  for (const text of texts) {
    const decoded = decodeBatch(text, { maxBatch, maxDepth });
    if (!decoded.ok) return decoded;
    messages.push(...decoded.messages);
  }
  if (messages.length > maxBatch) return { ok: false, status: 413, error: 'batchTooLarge', reason: `more than ${maxBatch} messages in one request` };
  return { ok: true, messages };
}

/**
 * The JSON texts of the batch: the body itself, or the `message` parameters of a form body
 * (each holds one message or an array of them).
 */
function messageTexts(body: string, contentType: string | undefined): string[] {
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'application/json') return [body];
  const trimmed = body.trimStart();
  if (trimmed.startsWith('[') || trimmed.startsWith('{')) return [body];
  return new URLSearchParams(body).getAll('message');
}
