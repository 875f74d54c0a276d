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
import type { ProcessContext, TransportHost } from '../core/contract.js';
import { readBodyThen, type BodyResult } from '../http/body.js';
import { requestFacts } from '../http/request-facts.js';
import { sendBatchError } from '../http/responses.js';

const gzipAsync = promisify(gzip);

/**
 * Answers one long-polling request. `failed` is told of a failure inside the server (a bug): the
 * caller reports it and answers 500. No promise is made unless something on the way waits for
 * one (see ProcessContext.answerLater for why that matters here).
 */
export function handleLongPolling(core: TransportHost, req: IncomingMessage, res: ServerResponse, failed: (error: unknown) => void): void {
  readBodyThen(req, core.options.maxRequestBytes, core.options.bodyTimeout, (body) => {
    try {
      answerBody(core, req, res, body, failed);
    } catch (error) {
      failed(error);
    }
  });
}

function answerBody(core: TransportHost, req: IncomingMessage, res: ServerResponse, body: BodyResult, failed: (error: unknown) => void): void {
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
  const polled = pollOnce(core, decoded.messages, req, res, 'long-polling', (replies) => sendAnswer(core, req, res, replies), failed);
  if (polled instanceof Promise) polled.catch(failed);
}

/**
 * Writes a JSON answer; one larger than `compressAbove` bytes goes gzip-compressed to a client
 * that accepts it (compressed on the thread pool, not the event loop).
 */
function sendAnswer(core: TransportHost, req: IncomingMessage, res: ServerResponse, replies: readonly string[]): void | Promise<void> {
  const payload = encodeBatch(replies);
  const { compressAbove } = core.options;
  if (compressAbove > 0 && payload.length > compressAbove && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))) return sendCompressed(res, payload);
  sendJson(res, payload);
}

const JSON_TYPE = 'application/json; charset=utf-8';
const NO_CACHE = 'no-cache, no-store';

/** Writes a JSON answer as it is: most are small, and compressing them would cost more than it saves. */
function sendJson(res: ServerResponse, payload: string): void {
  res.writeHead(200, { 'Content-Type': JSON_TYPE, 'Cache-Control': NO_CACHE, 'Content-Length': Buffer.byteLength(payload) });
  res.end(payload);
}

/** Writes a JSON answer larger than `compressAbove` gzip-compressed, compressed on the thread pool, not the event loop. */
async function sendCompressed(res: ServerResponse, payload: string): Promise<void> {
  const body = await gzipAsync(payload, { level: 6 });
  if (res.destroyed) return;
  res.writeHead(200, { 'Content-Type': JSON_TYPE, 'Cache-Control': NO_CACHE, 'Content-Encoding': 'gzip', Vary: 'Accept-Encoding', 'Content-Length': body.length });
  res.end(body);
}

/**
 * Processes one polling request and writes its answer with `answer`: at once when nothing had
 * to wait (no promise made), once a held connect is released, or once the batch's promise
 * settles. Nothing is written to a client that left. A failure of `answer` goes to `failed`.
 * Shared by long-polling and callback-polling.
 */
export function pollOnce(
  core: TransportHost,
  messages: unknown[],
  req: IncomingMessage,
  res: ServerResponse,
  transport: ConnectionType,
  answer: (replies: readonly string[]) => void | Promise<void>,
  failed: (error: unknown) => void,
): void | Promise<void> {
  /** Writes the answer; false when the client is gone (nothing written). */
  const respond = (replies: readonly string[]): boolean => {
    if (res.destroyed) return false;
    try {
      const sent = answer(replies);
      if (sent instanceof Promise) sent.catch(failed);
    } catch (error) {
      failed(error);
    }
    return true;
  };
  const context: ProcessContext = {
    transport,
    request: requestFacts(req, core.proxies),
    // When the client closes the line before the answer, a held connect is let go without
    // taking the queued messages with it.
    onClientGone: (callback) =>
      res.on('close', () => {
        if (!res.writableFinished) callback();
      }),
    answerLater: respond,
  };
  const replies = core.process(messages, context);
  if (replies instanceof Promise) {
    return replies.then((settled) => {
      if (!context.answeredLater) respond(settled);
    });
  }
  if (!context.answeredLater) respond(replies);
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
