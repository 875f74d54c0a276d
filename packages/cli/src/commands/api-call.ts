/**
 * What `perihelion publish` and `perihelion deliver` share: data from the command line (or stdin)
 * read as JSON, the API key, and one POST to the HTTP API of a running server, tried again for
 * about 15 s when it is named by an idempotency key (and only then: without a key, a call that
 * timed out may have gone through, and a retry would do it twice).
 */
import { channelProblem, isMeta } from '@perihelion/protocol';
import { isIdempotencyKey } from '@perihelion/server';
import { CommandFailure, UsageError, endpoint, flagOrEnv, isAddress, networkProblem, urlGoesInFlag } from './common.js';

const REQUEST_TIMEOUT = 30_000;
/** The pauses before the tries again of a call named by an idempotency key, ms: about 15 s in all, a restart's time. */
const RETRY_WAITS = [1000, 2000, 4000, 4000, 4000];
/** Answers that say to try again later: the server or a proxy in front of it, for now. */
const TRANSIENT_STATUS = new Set([502, 503, 504]);
/** The longest wait a Retry-After is followed for. */
const MAX_RETRY_AFTER = 10_000;

/** A command-line argument as JSON, with a hint for the usual mistake: a bare word meant as a string. */
export function parseJson(text: string, what: string): unknown {
  if (text.trim() === '') throw new UsageError(`${what} is empty; give JSON such as '{"headline":"hi"}' or '"text"'`);
  try {
    return JSON.parse(text);
  } catch (error) {
    const simple = text.length <= 40 && !/['"\\\n]/.test(text);
    const example = simple ? `'${JSON.stringify(text)}'` : `'"text"'`;
    throw new UsageError(`${what} is not valid JSON (${(error as Error).message}); a string must be quoted for JSON and for the shell, e.g. ${example}`);
  }
}

/**
 * JSON numbers become JavaScript numbers on the way (here, in the server and in JavaScript
 * clients): a number past the largest double would arrive as null, and an integer past 2^53 as a
 * nearby one. The first is refused; the second is said on stderr, since the user may not mind.
 */
function checkNumbers(text: string, what: string): void {
  const outsideStrings = text.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  for (const [token] of outsideStrings.matchAll(/-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g)) {
    const value = Number(token);
    if (!Number.isFinite(value)) throw new UsageError(`${what}: the number ${token} is beyond what a JSON number holds in JavaScript (it would arrive as null); send it as a string`);
    if (/^-?\d+$/.test(token) && !Number.isSafeInteger(value) && BigInt(token) !== BigInt(value)) {
      process.stderr.write(`perihelion: ${what}: ${token} is past 2^53 and will arrive as ${JSON.stringify(value)}; send it as a string to keep every digit\n`);
    }
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The `<channel>` argument of `command` (whose arguments `usage` shows): a channel to send on, no
 * wildcard and no /meta, or a usage error saying why (and where the server's address goes, for
 * one given in its place).
 */
export function channelArgument(channel: string, command: 'publish' | 'deliver', usage: string): string {
  const problem = channelProblem(channel, { allowWildcard: false });
  if (problem) throw new UsageError(`invalid channel ${JSON.stringify(channel)}: ${problem}${isAddress(channel) ? `\n${urlGoesInFlag(command, usage)}` : ''}`);
  if (isMeta(channel)) throw new UsageError(`cannot ${command === 'publish' ? 'publish to' : 'deliver on'} a meta channel (${channel})`);
  return channel;
}

/** The message data: the `<json>` argument, or stdin for `-`. */
export async function dataArgument(json: string): Promise<unknown> {
  const [text, what] = json === '-' ? [await readStdin(), 'the JSON on stdin'] : [json, '<json>'];
  const data = parseJson(text, what);
  checkNumbers(text, what);
  return data;
}

/** The server's API key, from --key or PERIHELION_API_KEY. */
export function apiKeyOf(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const key = flagOrEnv(flag, env.PERIHELION_API_KEY);
  if (key === undefined || key === '') throw new UsageError("no API key: set PERIHELION_API_KEY to the server's key (or pass --key)");
  return key;
}

/** --idempotency-key, checked as the server checks it. */
export function checkedIdempotencyKey(key: string | undefined): string | undefined {
  if (key !== undefined && !isIdempotencyKey(key)) throw new UsageError(`--idempotency-key must be 1 to 255 visible ASCII characters (a UUID, an order number and its event), got ${JSON.stringify(key).slice(0, 80)}`);
  return key;
}

/** The API's `{error: {code, message}}`, else the start of whatever came back. */
function apiError(status: number, body: string): string {
  try {
    const { error } = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (typeof error?.code === 'string') return `${error.code}: ${String(error.message)} (HTTP ${status})`;
  } catch {
    // Not the API (a proxy's error page, say): show what it said.
  }
  const text = body.trim().replace(/\s+/g, ' ');
  return `HTTP ${status}${text !== '' ? `: ${text.slice(0, 200)}` : ''}`;
}

export interface ApiCall {
  base: URL;
  /** The endpoint, e.g. /api/publish. */
  path: string;
  apiKey: string;
  body: unknown;
  idempotencyKey: string | undefined;
  /** What the call does, for messages: "publish", "deliver". */
  what: string;
}

/** POSTs the call; resolves to the answer's body once the server accepted it, else throws a CommandFailure saying why. */
export async function callApi(call: ApiCall): Promise<string> {
  const { base, idempotencyKey, what } = call;
  const url = endpoint(base, call.path, 'http');
  const request = {
    method: 'POST',
    headers: { Authorization: `Bearer ${call.apiKey}`, 'Content-Type': 'application/json', ...(idempotencyKey !== undefined ? { 'Idempotency-Key': idempotencyKey } : {}) },
    body: JSON.stringify(call.body),
  };
  const waits = idempotencyKey !== undefined ? RETRY_WAITS : [];
  for (let attempt = 0; ; attempt++) {
    let failure: string;
    let retryAfter: number | null = null;
    try {
      const response = await fetch(url, { ...request, signal: AbortSignal.timeout(REQUEST_TIMEOUT) });
      const body = await response.text();
      if (response.ok) return body;
      failure = `${what} failed: ${apiError(response.status, body)}`;
      if (!TRANSIENT_STATUS.has(response.status)) throw new CommandFailure(failure);
      retryAfter = Number(response.headers.get('retry-after')) || null;
    } catch (error) {
      if (error instanceof CommandFailure) throw error;
      failure = networkProblem(error, endpoint(base, '', 'http').replace(/\/$/, ''));
    }
    const wait = waits[attempt];
    if (wait === undefined) throw new CommandFailure(failure);
    const ms = retryAfter !== null ? Math.min(retryAfter * 1000, MAX_RETRY_AFTER) : wait;
    process.stderr.write(`perihelion: ${failure} (trying again in ${ms / 1000} s with the same idempotency key, ${attempt + 1} of ${waits.length})\n`);
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
}
