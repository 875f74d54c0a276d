/**
 * `perihelion publish <channel> <json>`: one message through the HTTP API of a running server
 * (POST /api/publish with `Authorization: Bearer <api key>`). The server publishes it as itself,
 * so channel rules for clients do not apply; the API key is what authorizes it.
 */
import { Command } from 'commander';
import { apiKeyOf, callApi, channelArgument, checkedIdempotencyKey, dataArgument, parseJson } from './api-call.js';
import { DEFAULT_URL, UsageError, endpoint, runAction, serverUrl, usageExitsWith2 } from './common.js';

interface PublishFlags {
  url?: string;
  key?: string;
  ext?: string;
  idempotencyKey?: string;
  verbose?: boolean;
}

async function publish(channel: string, json: string, flags: PublishFlags, env: NodeJS.ProcessEnv): Promise<number> {
  channelArgument(channel, 'publish', '<channel> <json>');
  const base = serverUrl(flags.url, env);
  const apiKey = apiKeyOf(flags.key, env);
  let ext: unknown;
  if (flags.ext !== undefined) {
    ext = parseJson(flags.ext, '--ext');
    if (typeof ext !== 'object' || ext === null || Array.isArray(ext)) throw new UsageError(`--ext must be a JSON object, e.g. '{"source":"cron"}'`);
  }
  const data = await dataArgument(json);
  const idempotencyKey = checkedIdempotencyKey(flags.idempotencyKey);
  const answer = await callApi({ base, path: '/api/publish', apiKey, body: ext === undefined ? { channel, data } : { channel, data, ext }, idempotencyKey, what: 'publish' });
  if (flags.verbose === true) process.stderr.write(`perihelion: published to ${channel} at ${endpoint(base, '/api/publish', 'http')}: ${answer.trim()}\n`);
  return 0;
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
