/**
 * Wire framing for the HTTP transports other than plain long-polling: JSONP wrapping,
 * Server-Sent Events and newline-delimited JSON streaming. Pure functions over strings.
 */

/** Callback names both clients generate (`_cometd_jsonp_N`, `__jsonpN__`) and dotted paths; 64 characters at most. */
const CALLBACK = /^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*$/;

export const DEFAULT_JSONP_CALLBACK = 'jsonpcallback';

export function isValidCallback(name: unknown): name is string {
  return typeof name === 'string' && name.length <= 64 && CALLBACK.test(name);
}

/**
 * `/**\/cb([...]);`. The leading comment defeats the Rosetta Flash family of attacks (a response
 * that starts with attacker-chosen bytes); U+2028/U+2029 are legal in JSON but end a line in
 * older JavaScript, so they are escaped.
 */
export function jsonpWrap(callback: string, json: string): string {
  return `/**/${callback}(${json.replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029')});`;
}

/** One SSE event. `data` must be one line (serialised JSON is). */
export function sseEvent(data: string, options: { id?: string | number; event?: string } = {}): string {
  let out = '';
  if (options.event !== undefined) out += `event: ${options.event}\n`;
  if (options.id !== undefined) out += `id: ${options.id}\n`;
  return `${out}data: ${data}\n\n`;
}

/** An SSE comment line: ignored by EventSource, but it keeps intermediaries from cutting an idle line. */
export function sseComment(text = ''): string {
  return `:${text}\n\n`;
}

/** The `retry:` field, telling EventSource how long to wait before reconnecting. */
export function sseRetry(ms: number): string {
  return `retry: ${Math.max(0, Math.floor(ms))}\n\n`;
}

/** One line of newline-delimited JSON (http-streaming). */
export function ndjsonLine(json: string): string {
  return `${json}\n`;
}
