import type { IncomingMessage } from 'node:http';

export type BodyResult = { ok: true; text: string } | { ok: false; status: 400 | 413; error: 'badRequest' | 'requestTooLarge'; reason: string };

/**
 * Reads a request body as UTF-8, refusing it as soon as it passes `limit` bytes (before it is
 * all in memory), when it stalls for longer than `idleMs` between chunks, or when the whole body
 * takes longer than six times that (a slow drip that never quite stalls).
 */
export function readBody(req: IncomingMessage, limit: number, idleMs = 10_000): Promise<BodyResult> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    return Promise.resolve({ ok: false, status: 413, error: 'requestTooLarge', reason: `request body of ${declared} bytes exceeds the limit of ${limit} bytes` });
  }
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (result: BodyResult): void => {
      if (done) return;
      done = true;
      clearTimeout(idle);
      clearTimeout(whole);
      req.off('data', onData);
      resolve(result);
    };
    const idle = setTimeout(() => finish({ ok: false, status: 400, error: 'badRequest', reason: 'request body stalled' }), idleMs);
    const whole = setTimeout(() => finish({ ok: false, status: 400, error: 'badRequest', reason: 'request body took too long' }), idleMs * 6);
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        finish({ ok: false, status: 413, error: 'requestTooLarge', reason: `request body exceeds the limit of ${limit} bytes` });
        return;
      }
      chunks.push(chunk);
      idle.refresh();
    };
    req.on('data', onData);
    req.once('end', () => finish({ ok: true, text: Buffer.concat(chunks, size).toString('utf8') }));
    req.once('error', () => finish({ ok: false, status: 400, error: 'badRequest', reason: 'request body could not be read' }));
  });
}
