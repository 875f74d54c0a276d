/**
 * `perihelion deliver <channel> <json> --user <id> | --client <clientId>`: one message to every
 * session of an authenticated user (each tab and device, on every node), or to one session,
 * through the HTTP API of a running server (POST /api/deliver). No subscription is needed: the
 * sessions are addressed, not a channel's subscribers.
 */
import { Command } from 'commander';
import { apiKeyOf, callApi, channelArgument, checkedIdempotencyKey, dataArgument } from './api-call.js';
import { DEFAULT_URL, UsageError, runAction, serverUrl, usageExitsWith2 } from './common.js';

interface DeliverFlags {
  user?: string;
  client?: string;
  url?: string;
  key?: string;
  idempotencyKey?: string;
  verbose?: boolean;
}

async function deliver(channel: string, json: string, flags: DeliverFlags, env: NodeJS.ProcessEnv): Promise<number> {
  channelArgument(channel, 'deliver', '<channel> <json> --user <id>');
  const { user, client } = flags;
  if ((user === undefined) === (client === undefined)) throw new UsageError('say whom to deliver to: --user <id> (every session of a user) or --client <clientId> (one session), one of the two');
  if (user === '' || client === '') throw new UsageError(`--${user === '' ? 'user' : 'client'} is empty`);
  const base = serverUrl(flags.url, env);
  const apiKey = apiKeyOf(flags.key, env);
  const data = await dataArgument(json);
  const idempotencyKey = checkedIdempotencyKey(flags.idempotencyKey);
  const to = user !== undefined ? { user } : { clientId: client };
  const answer = await callApi({ base, path: '/api/deliver', apiKey, body: { ...to, channel, data }, idempotencyKey, what: 'deliver' });
  const { delivered } = JSON.parse(answer) as { delivered?: unknown };
  // A user with no session connected is no error (the server has nobody to send it to), but the
  // caller may have expected someone: said without --verbose.
  if (delivered === 0) process.stderr.write(`perihelion: no session of ${JSON.stringify(user)} is connected: delivered to none\n`);
  else if (flags.verbose === true) process.stderr.write(`perihelion: delivered on ${channel} to ${user !== undefined ? `${String(delivered)} session(s) of ${JSON.stringify(user)}` : client}\n`);
  return 0;
}

export function deliverCommand(): Command {
  const command = new Command('deliver')
    .description('send one message to every session of a user, or to one session, through the HTTP API of a running server (needs its API key)')
    .argument('<channel>', 'channel the message comes on, e.g. /notifications (no wildcards); no subscription to it is needed')
    .argument('<json>', 'the message data, as JSON; - reads it from stdin')
    .option('--user <id>', 'every session of this authenticated user (each tab and device, on every node)')
    .option('--client <clientId>', 'this one session')
    .option('--url <base>', `address of the server (default ${DEFAULT_URL}; PERIHELION_URL)`)
    .option('--key <apiKey>', "the server's API key; prefer PERIHELION_API_KEY, since a key on the command line shows in ps and in shell history")
    .option('--idempotency-key <key>', 'names this delivery: run again with the same key (a retry), it sends nothing again to a session that has it, and reaches those the first run did not; the command itself then tries again, for about 15 s, when the server cannot be reached or answers 502, 503 or 504')
    .option('--verbose', 'report the delivery on stderr (otherwise success prints nothing, but a user with no session is said)')
    .addHelpText(
      'after',
      `
The server must run with the same key in PERIHELION_API_KEY. Exit codes: 0 delivered (to a user: to
every session it has, none included, which is said on stderr), 1 the server refused or could not be
reached, or --client names no session, 2 a usage error.

Examples:
  export PERIHELION_API_KEY=…                       # the key the server was started with
  perihelion deliver /notifications '{"text":"your order shipped"}' --user 42
  perihelion deliver /notifications '{"text":"shipped"}' --user 42 --idempotency-key order-8412-shipped   # safe to retry
  perihelion deliver /private/notice '"hi"' --client <clientId>

The same with curl:
  curl -H "Authorization: Bearer $PERIHELION_API_KEY" -H 'Content-Type: application/json' \\
       -d '{"user":"42","channel":"/notifications","data":{"text":"hi"}}' http://localhost:8080/api/deliver`,
    )
    .action((channel: string, json: string, flags: DeliverFlags) => runAction(() => deliver(channel, json, flags, process.env)));
  return usageExitsWith2(command);
}
