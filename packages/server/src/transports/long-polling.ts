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
import type { ClientGoneWatcher, ProcessContext, RequestFacts, TransportHost } from '../core/contract.js';
import { readBodyThen, type BodyResult } from '../http/body.js';
import { requestFacts } from '../http/request-facts.js';
import { sendBatchError } from '../http/responses.js';

const gzipAsync = promisify(gzip);

/**
 * Answers one long-polling request. `failed` is told of a failure inside the server (a bug): the
 * caller reports it and answers 500. No promise is made unless something on the way waits for
 * one (see ProcessContext.answerLater for why that matters here).
 */
export function handleLongPolling(core: TransportHost, req: IncomingMessage, res: ServerResponse, failed: PollFailed): void {
  readBodyThen(req, core.options.maxRequestBytes, core.options.bodyTimeout, (body) => {
    try {
      answerBody(core, req, res, body, failed);
    } catch (error) {
      failed(res, error);
    }
  });
}

function answerBody(core: TransportHost, req: IncomingMessage, res: ServerResponse, body: BodyResult, failed: PollFailed): void {
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
  const polled = pollOnce(core, decoded.messages, req, res, 'long-polling', null, failed);
  if (polled instanceof Promise) polled.catch((error: unknown) => failed(res, error));
}

/**
 * Writes a JSON answer; one larger than `compressAbove` bytes goes gzip-compressed to a client
 * that accepts it (compressed on the thread pool, not the event loop).
 */
function sendAnswer(core: TransportHost, req: IncomingMessage, res: ServerResponse, replies: readonly string[]): void | Promise<void> {
  const payload = encodeBatch(replies);
  const { compressAbove } = core.options;
  if (compressAbove > 0 && payload.length > compressAbove && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))) return sendCompressed(res, payload);
  sendJson(res, payload, encodedBytes(replies));
}

/**
 * The length in UTF-8 bytes of encodeBatch(replies), measured on the parts: measuring the
 * joined text would copy it into one string first, and it is copied once more as it is written.
 */
function encodedBytes(replies: readonly string[]): number {
  let bytes = replies.length === 0 ? 2 : replies.length + 1; // the brackets and the commas
  for (const reply of replies) bytes += Buffer.byteLength(reply);
  return bytes;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const NO_CACHE = 'no-cache, no-store';

/** Writes a JSON answer as it is: most are small, and compressing them would cost more than it saves. */
function sendJson(res: ServerResponse, payload: string, bytes: number): void {
  res.writeHead(200, { 'Content-Type': JSON_TYPE, 'Cache-Control': NO_CACHE, 'Content-Length': bytes });
  res.end(payload);
}

/** Writes a JSON answer larger than `compressAbove` gzip-compressed, compressed on the thread pool, not the event loop. */
async function sendCompressed(res: ServerResponse, payload: string): Promise<void> {
  const body = await gzipAsync(payload, { level: 6 });
  if (res.destroyed) return;
  res.writeHead(200, { 'Content-Type': JSON_TYPE, 'Cache-Control': NO_CACHE, 'Content-Encoding': 'gzip', Vary: 'Accept-Encoding', 'Content-Length': body.length });
  res.end(body);
}

/** Writes a polling request's answer (long-polling's JSON, callback-polling's script). */
export type PollAnswer = (replies: readonly string[]) => void | Promise<void>;
/** Told of a failure inside the server while answering `res` (a bug): reported, answered 500. */
export type PollFailed = (res: ServerResponse, error: unknown) => void;

/**
 * Processes one polling request and writes its answer: at once when nothing had to wait (no
 * promise made), once a held connect is released, or once the batch's promise settles. Nothing
 * is written to a client that left. A failure of the answer goes to `failed`. Shared by
 * long-polling and callback-polling (`answer`; long-polling's own JSON without one).
 */
export function pollOnce(
  core: TransportHost,
  messages: unknown[],
  req: IncomingMessage,
  res: ServerResponse,
  transport: ConnectionType,
  answer: PollAnswer | null,
  failed: PollFailed,
): void | Promise<void> {
  const context = new PollContext(core, req, res, transport, answer, failed);
  const replies = core.process(messages, context);
  if (replies instanceof Promise) {
    return replies.then((settled) => {
      if (!context.answeredLater) context.answerLater(settled);
    });
  }
  if (!context.answeredLater) context.answerLater(replies);
}

const WATCHER = Symbol('perihelion.clientGone');
type WatchedResponse = ServerResponse & { [WATCHER]?: ClientGoneWatcher };

/**
 * A polling request, as the core sees it. A record with methods rather than closures made per
 * request: a held long-poll keeps it (and what it keeps) for as long as it waits.
 */
class PollContext implements ProcessContext {
  readonly request: RequestFacts;
  answeredLater = false;

  constructor(
    private readonly core: TransportHost,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    readonly transport: ConnectionType,
    private readonly answer: PollAnswer | null,
    private readonly failed: PollFailed,
  ) {
    this.request = requestFacts(req, core.proxies);
  }

  /** When the client closes the line before the answer, a held connect is let go without taking the queued messages with it. */
  onClientGone(watcher: ClientGoneWatcher): void {
    (this.res as WatchedResponse)[WATCHER] = watcher;
    this.res.on('close', responseClosed);
  }

  /** Writes the answer; false when the client is gone (nothing written). */
  answerLater(replies: readonly string[]): boolean {
    const { res } = this;
    if (res.destroyed) return false;
    try {
      const sent = this.answer !== null ? this.answer(replies) : sendAnswer(this.core, this.req, res, replies);
      if (sent instanceof Promise) sent.catch((error: unknown) => this.failed(res, error));
    } catch (error) {
      this.failed(res, error);
    }
    return true;
  }
}

/** A polling response closed: before it was written, its client gave up (one listener for every response). */
function responseClosed(this: WatchedResponse): void {
  const watcher = this[WATCHER];
  if (watcher !== undefined && !this.writableFinished) watcher.clientGone();
}

export type Decoded = DecodeResult;

/** Decodes one or more JSON texts (each a message or an array) into one batch, within the limits. */
export function decodeTexts(core: TransportHost, texts: readonly string[]): Decoded {
  const { maxBatch, maxDepth } = core.options;
  // One text, the usual body: decodeBatch checks it against maxBatch itself.
  if (texts.length === 1) return decodeBatch(texts[0]!, { maxBatch, maxDepth });
  const messages: unknown[] = [];
  for (const text of texts) {
    const decoded = decodeBatch(text, { maxBatch, maxDepth });
    if (!decoded.ok) return decoded;
    messages.push(...decoded.messages);
  }
  if (messages.length > maxBatch) return { ok: false, status: 413, error: 'batchTooLarge', reason: `more than ${maxBatch} messages in one request` };
  return { ok: true, messages };
}

/** A Content-Type of `application/json`, with parameters or none. */
const JSON_BODY = /^\s*application\/json\s*(?:;|$)/i;

/**
 * The JSON texts of the batch: the body itself, or the `message` parameters of a form body
 * (each holds one message or an array of them).
 */
function messageTexts(body: string, contentType: string | undefined): string[] {
  if (contentType !== undefined && JSON_BODY.test(contentType)) return [body];
  const trimmed = body.trimStart();
  if (trimmed.startsWith('[') || trimmed.startsWith('{')) return [body];
  return new URLSearchParams(body).getAll('message');
}
