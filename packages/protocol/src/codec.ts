/**
 * The JSON codec: bytes ↔ batches of untrusted values. Pure functions; every limit is a
 * parameter. A batch is "either an array of messages or a single message" (Bayeux §Messages:
 * a server MUST accept the array and MAY accept a single object; CometD and Faye accept both).
 */

export interface DecodeLimits {
  /** Greatest nesting of arrays and objects, counted before parsing. Default 32. */
  maxDepth?: number;
  /** Most messages in one batch. Default 100. */
  maxBatch?: number;
}

export type DecodeResult =
  | { ok: true; messages: unknown[] }
  | { ok: false; status: 400 | 413; error: 'badRequest' | 'batchTooLarge'; reason: string };

/**
 * Depth of `[`/`{` nesting outside strings. Run before JSON.parse so that a hostile
 * `[[[[…` never builds a deep structure that later recursive code would overflow on.
 */
export function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 /* [ */ || c === 123 /* { */) {
      if (++depth > max) max = depth;
    } else if (c === 93 /* ] */ || c === 125 /* } */) depth--;
  }
  return max;
}

/**
 * Whether a batch's text (a JSON array of messages, or one message) nests messages deeper than
 * `maxDepth`: the outer array adds one level that is not part of any message, a bare message
 * none.
 */
export function nestedTooDeep(text: string, maxDepth: number): boolean {
  const outer = /^\s*\[/.test(text) ? 1 : 0;
  return jsonDepth(text) > maxDepth + outer;
}

export function decodeBatch(text: string, limits: DecodeLimits = {}): DecodeResult {
  const maxDepth = limits.maxDepth ?? 32;
  const maxBatch = limits.maxBatch ?? 100;
  if (nestedTooDeep(text, maxDepth)) {
    return { ok: false, status: 400, error: 'badRequest', reason: `JSON nested deeper than ${maxDepth} levels` };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { ok: false, status: 400, error: 'badRequest', reason: `malformed JSON (${(error as Error).message})` };
  }
  const messages = Array.isArray(value) ? value : [value];
  if (value === null || (typeof value !== 'object')) {
    return { ok: false, status: 400, error: 'badRequest', reason: 'the body must be a JSON array of messages or one message object' };
  }
  if (messages.length > maxBatch) {
    return { ok: false, status: 413, error: 'batchTooLarge', reason: `${messages.length} messages in one request; at most ${maxBatch} are allowed` };
  }
  return { ok: true, messages };
}

/**
 * Joins already-serialised messages into one JSON array. Messages published to many sessions
 * are serialised once and shared; this only concatenates, and by `+` rather than `join`: the
 * result is written out once, and copied into one string only then, where `join` would copy
 * every message into a new string first.
 */
export function encodeBatch(serialised: readonly string[]): string {
  const count = serialised.length;
  if (count === 0) return '[]';
  let batch = '[' + serialised[0]!;
  for (let i = 1; i < count; i++) batch = batch + ',' + serialised[i]!;
  return batch + ']';
}

