/**
 * `perihelion subscribe <pattern>`: a Bayeux session over WebSocket that prints every message
 * of a channel or pattern as one line of JSON on stdout, so that `| jq` works. Status goes to
 * stderr, and only with --verbose.
 */
import { Command } from 'commander';
import { channelProblem, isMeta } from '@perihelion/protocol';
import { BayeuxRefusal, BayeuxSocket, EndpointUnreachable } from '../bayeux-socket.js';
import { CommandFailure, DEFAULT_URL, UsageError, endpoint, flagOrEnv, networkProblem, runAction, serverUrl, usageExitsWith2 } from './common.js';

interface SubscribeFlags {
  url?: string;
  path?: string;
  token?: string;
  dataOnly?: boolean;
  count?: string;
  verbose?: boolean;
}

const DEFAULT_PATH = '/bayeux';

async function subscribe(pattern: string, flags: SubscribeFlags, env: NodeJS.ProcessEnv): Promise<number> {
  const problem = channelProblem(pattern);
  if (problem) throw new UsageError(`invalid channel ${JSON.stringify(pattern)}: ${problem}`);
  if (isMeta(pattern)) throw new UsageError(`meta channels cannot be subscribed to (${pattern})`);
  let count = Infinity;
  if (flags.count !== undefined) {
    if (!/^\d+$/.test(flags.count) || Number(flags.count) < 1) throw new UsageError(`--count must be a whole number from 1, got ${JSON.stringify(flags.count)}`);
    count = Number(flags.count);
  }
  const base = serverUrl(flags.url, env);
  const path = flagOrEnv(flags.path, env.PERIHELION_PATH) ?? DEFAULT_PATH;
  if (!path.startsWith('/')) throw new UsageError(`the path must start with "/", got ${JSON.stringify(path)}`);
  const token = flagOrEnv(flags.token, env.PERIHELION_TOKEN);
  const url = endpoint(base, path, 'ws');

  let printed = 0;
  const session: BayeuxSocket = new BayeuxSocket({
    url,
    subscriptions: [pattern],
    ...(token !== undefined ? { handshakeExt: { token } } : {}),
    onMessage: ({ channel, data }) => {
      if (printed >= count) return;
      printed++;
      process.stdout.write(`${JSON.stringify(flags.dataOnly === true ? data : { channel, data })}\n`);
      if (printed >= count) void session.stop();
    },
    ...(flags.verbose === true ? { onStatus: (line: string) => process.stderr.write(`perihelion: ${line}\n`) } : {}),
  });

  // Ending the session politely ends the command with 0; a second signal ends it at once.
  const stop = (): void => void session.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // The reader went away (`| head -n 3`): nothing more to print to.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') stop();
  });

  try {
    await session.run();
    return 0;
  } catch (error) {
    if (error instanceof BayeuxRefusal) throw new CommandFailure(error.message);
    if (error instanceof EndpointUnreachable) throw new CommandFailure(networkProblem(error.cause, url));
    throw error;
  }
}

export function subscribeCommand(): Command {
  const command = new Command('subscribe')
    .description('print the messages published on a channel or pattern as they arrive, one line of JSON each')
    .argument('<pattern>', 'a channel (/news/today) or pattern: /news/* (one level below), /news/** (any depth)')
    .option('--url <base>', `address of the server (default ${DEFAULT_URL}; PERIHELION_URL); http becomes ws, https wss`)
    .option('--path <path>', `mount path of the Bayeux endpoint (default ${DEFAULT_PATH}; PERIHELION_PATH)`)
    .option('--token <jwt>', 'token sent in the handshake ext.token; prefer PERIHELION_TOKEN, since a token on the command line shows in ps and in shell history')
    .option('--data-only', 'print only the data of each message')
    .option('--count <n>', 'exit 0 after n messages')
    .option('--verbose', 'report the connection on stderr: session, subscription, reconnects')
    .addHelpText(
      'after',
      `
Each message is printed as {"channel":…,"data":…} (with --data-only, its data) on one line. The
session follows the server's advice: it starts a new session and subscribes again when the server
ends or forgets its session, and reconnects after 1 s, 2 s, 4 s, … (at most 10 s) when the connection
drops. SIGINT or SIGTERM ends the session and exits 0. Exit codes: 0 done, 1 the server refused
(the error is printed) or could not be reached, 2 a usage error.

Examples:
  perihelion subscribe '/news/**' | jq
  perihelion subscribe /chat/demo --data-only --count 1
  perihelion subscribe /prices/ACME --url https://push.example.com --path /cometd --verbose
  PERIHELION_TOKEN=eyJ… perihelion subscribe '/user/42/**'`,
    )
    .action((pattern: string, flags: SubscribeFlags) => runAction(() => subscribe(pattern, flags, process.env)));
  return usageExitsWith2(command);
}
