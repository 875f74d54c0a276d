import type { IncomingMessage } from 'node:http';

export type BodyResult = { ok: true; text: string } | { ok: false; status: 400 | 413; error: 'badRequest' | 'requestTooLarge'; reason: string };

/** A body being read: when it began, when its last chunk came, and how to give up on it. */
interface Reading {
  startedAt: number;
  lastChunkAt: number;
  idleMs: number;
  giveUp(reason: string): void;
}

/**
 * The bodies being read, watched by one sweep for all of them rather than two timers per
 * request: a long-poll is a request, and creating and clearing timers was a measurable part of
 * answering one. The sweep runs only while a body is being read.
 */
const readings = new Set<Reading>();
/** How often the sweep looks: the limits (at least 100 ms, see bodyTimeout) are met within this. */
const SWEEP_MS = 100;
let sweeper: NodeJS.Timeout | null = null;

function sweep(): void {
  const now = Date.now();
  for (const reading of readings) {
    if (now - reading.lastChunkAt >= reading.idleMs) reading.giveUp('request body stalled');
    else if (now - reading.startedAt >= reading.idleMs * 6) reading.giveUp('request body took too long');
  }
  if (readings.size === 0 && sweeper !== null) {
    clearInterval(sweeper);
    sweeper = null;
  }
}

function watch(reading: Reading): void {
  readings.add(reading);
  if (sweeper === null) {
    sweeper = setInterval(sweep, SWEEP_MS);
    sweeper.unref();
  }
}

/**
 * Reads a request body as UTF-8, refusing it as soon as it passes `limit` bytes (before it is
 * all in memory), when it stalls for longer than `idleMs` between chunks, or when the whole body
 * takes longer than six times that (a slow drip that never quite stalls). Calls `done` once.
 */
export function readBodyThen(req: IncomingMessage, limit: number, idleMs: number, done: (result: BodyResult) => void): void {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    return done({ ok: false, status: 413, error: 'requestTooLarge', reason: `request body of ${declared} bytes exceeds the limit of ${limit} bytes` });
  }
  const chunks: Buffer[] = [];
  let size = 0;
  const now = Date.now();
  const reading: Reading = {
    startedAt: now,
    lastChunkAt: now,
    idleMs,
    giveUp: (reason) => finish({ ok: false, status: 400, error: 'badRequest', reason }),
  };
  const finish = (result: BodyResult): void => {
    if (!readings.delete(reading)) return; // already finished
    // No listener of this read stays on the request: a held long-poll keeps its request, and
    // with it whatever they would keep (see ProcessContext.answerLater).
    req.off('data', onData);
    req.off('end', onEnd);
    req.off('error', onError);
    done(result);
  };
  const onData = (chunk: Buffer): void => {
    size += chunk.length;
    if (size > limit) {
      finish({ ok: false, status: 413, error: 'requestTooLarge', reason: `request body exceeds the limit of ${limit} bytes` });
      return;
    }
    chunks.push(chunk);
    reading.lastChunkAt = Date.now();
  };
  const onEnd = (): void => finish({ ok: true, text: chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks, size).toString('utf8') });
  const onError = (): void => finish({ ok: false, status: 400, error: 'badRequest', reason: 'request body could not be read' });
  watch(reading);
  req.on('data', onData);
  req.on('end', onEnd);
  req.on('error', onError);
}

/** readBodyThen, as a promise. */
export function readBody(req: IncomingMessage, limit: number, idleMs = 10_000): Promise<BodyResult> {
  return new Promise((resolve) => readBodyThen(req, limit, idleMs, resolve));
}
