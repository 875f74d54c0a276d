/**
 * Unguessable ids (client ids, browser ids) and history epochs from the system's CSPRNG, drawn
 * from a pool that is refilled 4 KiB at a time: a new connection needs two ids, and one
 * `randomBytes` call each cost about as much as the rest of the handshake's bookkeeping (4.5 µs
 * against 0.65 for six bytes here; the Redis engine draws an epoch for every publish). Every byte
 * is handed out once; this is how `crypto.randomUUID` amortises its entropy too.
 */
import { randomFillSync } from 'node:crypto';

const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let used = POOL_BYTES;

/** `n` fresh random bytes (at most 4 KiB), valid until the next call: read them at once. */
function take(n: number): Buffer {
  if (n > POOL_BYTES) throw new RangeError(`at most ${POOL_BYTES} random bytes at a time`);
  if (used + n > POOL_BYTES) {
    randomFillSync(pool);
    used = 0;
  }
  const bytes = pool.subarray(used, used + n);
  used += n;
  return bytes;
}

/** `bytes` random bytes as base64url (4 characters per 3 bytes). */
export function randomBase64url(bytes: number): string {
  return take(bytes).toString('base64url');
}

/** `bytes` random bytes as lowercase hexadecimal. */
export function randomHex(bytes: number): string {
  return take(bytes).toString('hex');
}

/** A random whole number of 48 bits. */
export function randomUint48(): number {
  return take(6).readUIntBE(0, 6);
}
