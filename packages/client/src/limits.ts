/**
 * What one request or WebSocket frame may carry: the server says so in its handshake reply
 * (`ext.limits`, Perihelion's server); until it has, and with a server that does not, Perihelion's
 * defaults. A frame past them is refused whole by the server (413, a WebSocket closed with 1009,
 * 400 for a message nested too deep) with no reply to any message in it, so the client builds its
 * frames within them, and refuses at once a message that could never fit one.
 */
import { jsonDepth, type Message } from '@perihelion/protocol';

export interface FrameLimits {
  /** Messages in one request or frame. */
  maxBatch: number;
  /** Bytes of one request body or frame. */
  maxRequestBytes: number;
  /** Nesting of one request or frame's JSON (the outer array counts). */
  maxDepth: number;
}

export const DEFAULT_LIMITS: FrameLimits = { maxBatch: 100, maxRequestBytes: 1024 * 1024, maxDepth: 32 };

/** The limits of a handshake reply's `ext.limits`, each taken only if it is a whole number above 1. */
export function readLimits(given: unknown, previous: FrameLimits): FrameLimits {
  const limits = { ...previous };
  for (const name of Object.keys(limits) as (keyof FrameLimits)[]) {
    const value = (given as Partial<FrameLimits> | undefined)?.[name];
    if (Number.isSafeInteger(value) && value! > 1) limits[name] = value!;
  }
  return limits;
}

/** UTF-8 bytes of `text`: what the server counts. */
const bytesOf = (text: string): number => new TextEncoder().encode(text).length;

/**
 * The text of each message `unsendable` measured, for `framesOf` to put in a frame as it is: a
 * publish is serialised once, however large its data (the frame leaves in the same turn or the
 * next, with the message as the outgoing extensions left it).
 */
const measured = new WeakMap<Message, string>();

/** `message` serialised: the text `unsendable` made of it, or a new one. */
function textOf(message: Message): string {
  return measured.get(message) ?? JSON.stringify(message);
}

/**
 * Why `message` can never be sent within `limits` (in a frame of its own), as the server would
 * say it: its Bayeux error code and why; null when it can.
 */
export function unsendable(message: Message, limits: FrameLimits): [code: number, why: string] | null {
  const text = JSON.stringify(message);
  measured.set(message, text);
  const bytes = bytesOf(text) + 2;
  if (bytes > limits.maxRequestBytes) return [413, `${bytes} bytes, more than the server takes in a request (${limits.maxRequestBytes})`];
  // Counted as the server counts it (codec.ts): a frame's outer array is not a level of its messages.
  const depth = jsonDepth(text);
  return depth > limits.maxDepth ? [400, `nested ${depth} deep, more than the server takes (${limits.maxDepth})`] : null;
}

/**
 * `messages` as the texts of the fewest frames (in order) that stay within `limits`: at most
 * `max` of what `size` counts (by default the UTF-8 bytes of a body; callback-polling counts the
 * characters of its URL).
 */
export function framesOf(messages: readonly Message[], limits: FrameLimits, max = limits.maxRequestBytes, size = bytesOf): string[] {
  // What JSON.stringify(messages) makes, from the texts already made.
  const texts = messages.map(textOf);
  const whole = `[${texts.join(',')}]`;
  // The usual case: one frame, in bytes measured without encoding it when that decides (three per unit at most).
  if (messages.length <= limits.maxBatch && ((size === bytesOf && whole.length * 3 <= max) || size(whole) <= max)) return [whole];
  const frames: string[] = [];
  let parts: string[] = [];
  // The opening bracket, then each message with the comma or bracket after it.
  const comma = size(',');
  let length = comma;
  for (const part of texts) {
    const more = size(part) + comma;
    if (parts.length > 0 && (parts.length >= limits.maxBatch || length + more > max)) {
      frames.push(`[${parts}]`);
      parts = [];
      length = comma;
    }
    parts.push(part);
    length += more;
  }
  if (parts.length > 0) frames.push(`[${parts}]`);
  return frames;
}
