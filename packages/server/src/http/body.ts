import type { IncomingMessage } from 'node:http';

export type BodyResult = { ok: true; text: string } | { ok: false; status: 400 | 413; error: 'badRequest' | 'requestTooLarge'; reason: string };

/**
 * A body being read: its limits, when it began and when its last chunk came, what came, and
 * whom to tell. Kept on the request (under READ) while the read lasts, and found there by
 * listeners shared by every request: a long-poll is a request, and the closures of a read made
 * per request, or listeners taken off again (which turns the request's table of listeners into
 * a slow dictionary), were a measurable part of answering one.
 */
class Reading {
  readonly startedAt: number;
  lastChunkAt: number;
  size = 0;
  /** The first chunk, and the rest when there are more (most bodies come in one). */
  first: Buffer | null = null;
  rest: Buffer[] | null = null;
  /** Its neighbours in the list of reads being watched (see `watched`). */
  previous: Reading | null = null;
  next: Reading | null = null;
  watched = false;

  constructor(
    readonly req: ReadingRequest,
    readonly limit: number,
    readonly idleMs: number,
    readonly done: (result: BodyResult) => void,
  ) {
    this.startedAt = this.lastChunkAt = Date.now();
  }

  text(): string {
    if (this.first === null) return '';
    if (this.rest === null) return this.first.toString('utf8');
    return Buffer.concat([this.first, ...this.rest], this.size).toString('utf8');
  }
}

const READ = Symbol('perihelion.bodyRead');
type ReadingRequest = IncomingMessage & { [READ]?: Reading | undefined };

/**
 * The bodies being read, watched by one sweep for all of them rather than two timers per
 * request. The sweep runs only while a body is being read. A list through the reads
 * themselves: a Set that a burst grows allocates a smaller table as it empties again.
 */
let watched: Reading | null = null;
/** How often the sweep looks: the limits (at least 100 ms, see bodyTimeout) are met within this. */
const SWEEP_MS = 100;
let sweeper: NodeJS.Timeout | null = null;

function sweep(): void {
  const now = Date.now();
  for (let reading = watched; reading !== null; ) {
    const next = reading.next; // finish takes it out of the list
    if (now - reading.lastChunkAt >= reading.idleMs) finish(reading, badRequest('request body stalled'));
    else if (now - reading.startedAt >= reading.idleMs * 6) finish(reading, badRequest('request body took too long'));
    reading = next;
  }
  if (watched === null && sweeper !== null) {
    clearInterval(sweeper);
    sweeper = null;
  }
}

function watch(reading: Reading): void {
  reading.watched = true;
  reading.next = watched;
  if (watched !== null) watched.previous = reading;
  watched = reading;
  if (sweeper === null) {
    sweeper = setInterval(sweep, SWEEP_MS);
    sweeper.unref();
  }
}

/** Takes a read out of the watched list; false when it was not in it (finished already). */
function unwatch(reading: Reading): boolean {
  if (!reading.watched) return false;
  reading.watched = false;
  const { previous, next } = reading;
  if (previous !== null) previous.next = next;
  else watched = next;
  if (next !== null) next.previous = previous;
  reading.previous = reading.next = null;
  return true;
}

function badRequest(reason: string): BodyResult {
  return { ok: false, status: 400, error: 'badRequest', reason };
}

/**
 * Ends a read, once. The shared listeners stay on the request but find no read there any more,
 * so they keep nothing of it alive: a held long-poll keeps its request (see
 * ProcessContext.answerLater).
 */
function finish(reading: Reading, result: BodyResult): void {
  if (!unwatch(reading)) return; // already finished
  reading.req[READ] = undefined;
  reading.first = null;
  reading.rest = null;
  reading.done(result);
}

function onData(this: ReadingRequest, chunk: Buffer): void {
  const reading = this[READ];
  if (reading === undefined) return; // refused already; the rest is not kept
  reading.size += chunk.length;
  if (reading.size > reading.limit) {
    finish(reading, { ok: false, status: 413, error: 'requestTooLarge', reason: `request body exceeds the limit of ${reading.limit} bytes` });
    return;
  }
  if (reading.first === null) reading.first = chunk;
  else (reading.rest ??= []).push(chunk);
  reading.lastChunkAt = Date.now();
}

function onEnd(this: ReadingRequest): void {
  const reading = this[READ];
  if (reading !== undefined) finish(reading, { ok: true, text: reading.text() });
}

function onError(this: ReadingRequest): void {
  const reading = this[READ];
  if (reading !== undefined) finish(reading, badRequest('request body could not be read'));
}

/**
 * Reads a request body as UTF-8, refusing it as soon as it passes `limit` bytes (before it is
 * all in memory), when it stalls for longer than `idleMs` between chunks, or when the whole body
 * takes longer than six times that (a slow drip that never quite stalls). Calls `done` once.
 * A request's body is read once.
 */
export function readBodyThen(req: IncomingMessage, limit: number, idleMs: number, done: (result: BodyResult) => void): void {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    return done({ ok: false, status: 413, error: 'requestTooLarge', reason: `request body of ${declared} bytes exceeds the limit of ${limit} bytes` });
  }
  const reading = new Reading(req, limit, idleMs, done);
  (req as ReadingRequest)[READ] = reading;
  watch(reading);
  req.on('data', onData);
  req.on('end', onEnd);
  req.on('error', onError);
}

/** readBodyThen, as a promise. */
export function readBody(req: IncomingMessage, limit: number, idleMs = 10_000): Promise<BodyResult> {
  return new Promise((resolve) => readBodyThen(req, limit, idleMs, resolve));
}
