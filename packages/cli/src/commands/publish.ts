/**
 * `perihelion publish <channel> <json>`: one message through the HTTP API of a running server
 * (POST /api/publish with `Authorization: Bearer <api key>`). The server publishes it as itself,
 * so channel rules for clients do not apply; the API key is what authorizes it.
 */
import { Command } from 'commander';
import { channelProblem, isMeta } from '@perihelion/protocol';
import { isIdempotencyKey } from '@perihelion/server';
import { CommandFailure, DEFAULT_URL, UsageError, endpoint, flagOrEnv, isAddress, networkProblem, runAction, serverUrl, urlGoesInFlag, usageExitsWith2 } from './common.js';

interface PublishFlags {
  url?: string;
  key?: string;
  ext?: string;
  idempotencyKey?: string;
  verbose?: boolean;
}

const REQUEST_TIMEOUT = 30_000;
/** The pauses before the tries again of a publish named by an idempotency key, ms: about 15 s in all, a restart's time. */
const RETRY_WAITS = [1000, 2000, 4000, 4000, 4000];
/** Answers that say to try again later: the server or a proxy in front of it, for now. */
const TRANSIENT_STATUS = new Set([502, 503, 504]);
/** The longest wait a Retry-After is followed for. */
const MAX_RETRY_AFTER = 10_000;

/** A command-line argument as JSON, with a hint for the usual mistake: a bare word meant as a string. */
function parseJson(text: string, what: string): unknown {
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

async function publish(channel: string, json: string, flags: PublishFlags, env: NodeJS.ProcessEnv): Promise<number> {
  const problem = channelProblem(channel, { allowWildcard: false });
  if (problem) throw new UsageError(`invalid channel ${JSON.stringify(channel)}: ${problem}${isAddress(channel) ? `\n${urlGoesInFlag('publish', '<channel> <json>')}` : ''}`);
  if (isMeta(channel)) throw new UsageError(`cannot publish to a meta channel (${channel})`);
  const base = serverUrl(flags.url, env);
  const key = flagOrEnv(flags.key, env.PERIHELION_API_KEY);
  if (key === undefined || key === '') throw new UsageError("no API key: set PERIHELION_API_KEY to the server's key (or pass --key)");
  let ext: unknown;
  if (flags.ext !== undefined) {
    ext = parseJson(flags.ext, '--ext');
    if (typeof ext !== 'object' || ext === null || Array.isArray(ext)) throw new UsageError(`--ext must be a JSON object, e.g. '{"source":"cron"}'`);
  }
  const [text, what] = json === '-' ? [await readStdin(), 'the JSON on stdin'] : [json, '<json>'];
  const data = parseJson(text, what);
  checkNumbers(text, what);

  const idempotencyKey = flags.idempotencyKey;
  if (idempotencyKey !== undefined && !isIdempotencyKey(idempotencyKey)) throw new UsageError(`--idempotency-key must be 1 to 255 visible ASCII characters (a UUID, an order number and its event), got ${JSON.stringify(idempotencyKey).slice(0, 80)}`);

  const url = endpoint(base, '/api/publish', 'http');
  const request = {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', ...(idempotencyKey !== undefined ? { 'Idempotency-Key': idempotencyKey } : {}) },
    body: JSON.stringify(ext === undefined ? { channel, data } : { channel, data, ext }),
  };
  // Only a publish named by a key is tried again: without one, a call that timed out may have been
  // published, and a retry would publish it twice.
  const waits = idempotencyKey !== undefined ? RETRY_WAITS : [];
  for (let attempt = 0; ; attempt++) {
    let failure: string;
    let retryAfter: number | null = null;
    try {
      const response = await fetch(url, { ...request, signal: AbortSignal.timeout(REQUEST_TIMEOUT) });
      const body = await response.text();
      if (response.ok) {
        if (flags.verbose === true) process.stderr.write(`perihelion: published to ${channel} at ${url}: ${body.trim()}\n`);
        return 0;
      }
      failure = `publish failed: ${apiError(response.status, body)}`;
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

export function publishCommand(): Command {
  const command = new Command('publish')
    .description('publish one message through the HTTP API of a running server (needs its API key)')
    .argument('<channel>', 'channel to publish to, e.g. /news/today (no wildcards)')
    .argument('<json>', 'the message data, as JSON; - reads it from stdin')
    .option('--url <base>', `address of the server (default ${DEFAULT_URL}; PERIHELION_URL)`)
    .option('--key <apiKey>', "the server's API key; prefer PERIHELION_API_KEY, since a key on the command line shows in ps and in shell history")
    .option('--ext <json>', 'ext object delivered with the message, as JSON, e.g. \'{"source":"cron"}\'')
    .option('--idempotency-key <key>', 'names this publish: run again with the same key (a retry), it publishes nothing again (the server remembers keys for its idempotencyWindow, 10 minutes by default); the command itself then tries again, for about 15 s, when the server cannot be reached or answers 502, 503 or 504')
    .option('--verbose', 'report the publish on stderr (otherwise success prints nothing)')
    .addHelpText(
      'after',
      `
The server must run with the same key in PERIHELION_API_KEY (at least 16 characters); it then
publishes the message itself, so the channel rules for clients do not apply. Exit codes: 0 published,
1 the server refused or could not be reached, 2 a usage error (bad channel, data that is not JSON).

Examples:
  export PERIHELION_API_KEY=…                       # the key the server was started with
  perihelion publish /news/today '{"headline":"hi"}'
  perihelion publish /alerts '"disk full"'          # a string is JSON in double quotes, inside shell quotes
  perihelion publish /counter -1                    # numbers, true, false and null are JSON too
  date +%s | perihelion publish /ticks -            # the JSON from stdin
  perihelion publish /news/today '{"headline":"hi"}' --ext '{"source":"cron"}' --url https://push.example.com
  perihelion publish /orders/8412 '{"status":"shipped"}' --idempotency-key order-8412-shipped   # safe to retry

The same with curl:
  curl -H "Authorization: Bearer $PERIHELION_API_KEY" -H 'Content-Type: application/json' \\
       -d '{"channel":"/news/today","data":{"headline":"hi"}}' http://localhost:8080/api/publish`,
    )
    .action((channel: string, json: string, flags: PublishFlags) => runAction(() => publish(channel, json, flags, process.env)));
  return usageExitsWith2(command);
}
