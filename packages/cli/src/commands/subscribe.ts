/**
 * `perihelion subscribe <pattern>`: a session of `@perihelion/client` that prints every message
 * of a channel or pattern as one line of JSON on stdout, so that `| jq` works. Status goes to
 * stderr, and only with --verbose; that messages may have been lost is said there always.
 *
 * The client does the protocol: transports (WebSocket, else HTTP), the server's advice,
 * reconnection with backoff, re-subscription and recovery of missed messages. Three policies
 * are the command's own, because a long-running subscriber in a terminal wants them and an
 * application may not:
 * - the server ending the session (a held connect answered with `reconnect: "none"`, after
 *   `/api/disconnect` or `session.disconnect()`) stops the client; the command starts a new
 *   session, which subscribes again;
 * - a first connection that cannot be made at all (neither a WebSocket nor an HTTP request
 *   reaches a Bayeux endpoint: refused, not found, or answered with something that is not
 *   Bayeux) ends the command with 1, so that a wrong address is reported rather than retried
 *   forever; once the server has answered, the client retries by itself;
 * - until the first session, what is retried is said on stderr each time (a proxy's 502, 503
 *   or 504; a handshake refused for now, as a full server refuses it, with the server's advice),
 *   so that a subscriber that waits is not silent about why; after that, only with --verbose;
 * - a refusal (handshake, connect or subscription) ends the command with 1 and the error.
 */
import { Command } from 'commander';
import { WebSocket } from 'ws';
import { Client, ClientError, type Message, type Subscription } from '@perihelion/client';
import { asPosition, channelProblem, formatPosition, isMeta, isWildcard, matches, parsePosition, type Position } from '@perihelion/protocol';
import { CommandFailure, DEFAULT_URL, UsageError, endpoint, flagOrEnv, isAddress, networkProblem, runAction, serverUrl, urlGoesInFlag, usageExitsWith2 } from './common.js';

interface SubscribeFlags {
  url?: string;
  path?: string;
  token?: string;
  dataOnly?: boolean;
  count?: string;
  transportRetry?: string;
  verbose?: boolean;
  positions?: boolean;
  since?: string[];
}

const DEFAULT_PATH = '/bayeux';
/** Bounds of the client's reconnection backoff: waits of up to 1 s, 2 s, 4 s, …, 10 s. */
const MIN_RECONNECT_DELAY = 1000;
const MAX_RECONNECT_DELAY = 10_000;
/** A session that lasted this long resets the pause before the next new session. */
const STEADY_MS = 10_000;

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(1))} s`;
}

/** What networkProblem words as "no answer in time". */
function timedOut(): Error {
  return Object.assign(new Error('no answer in time'), { name: 'TimeoutError' });
}

/** HTTP statuses a proxy answers for a server that is down, busy or slow: retried, and said. */
const GATEWAY_STATUSES = new Set([502, 503, 504]);

/** A first answer that is not Bayeux (a web page, another API): the address is wrong. */
class NotBayeux extends Error {}

/** Whether an HTTP body is a Bayeux answer: JSON, a message or a list of them, each with a channel. */
function isBayeux(text: string): boolean {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return false;
  }
  const list = Array.isArray(value) ? value : [value];
  return list.length > 0 && list.every((m) => typeof m === 'object' && m !== null && typeof (m as { channel?: unknown }).channel === 'string');
}

/** An HTTP answer as a user can recognise it: status, type, and the start of the body. */
function described(response: Response, text: string): string {
  const type = response.headers.get('content-type')?.split(';')[0]?.trim();
  const start = text.replace(/\s+/g, ' ').trim();
  const body = start === '' ? 'an empty body' : `${type ?? 'no content type'}: ${JSON.stringify(start.length > 60 ? `${start.slice(0, 60)}…` : start)}`;
  return `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''} (${body})`;
}

/**
 * Watches the first contact with the server. The client never gives up by itself: it falls back
 * from WebSocket to HTTP and retries with backoff. Until the server has answered once, the
 * failures of both are noted; when both have failed, `unreachable` is called with the WebSocket's,
 * the transport tried first. Before that first answer the client closes a line only when it
 * waited for it in vain (a socket that does not open, a request with no reply), so an abort
 * then counts as a timeout.
 */
class FirstContact {
  /** A Bayeux answer came: the address is right. */
  reached = false;
  /** A handshake succeeded: from now on the client's retries are its own business (--verbose). */
  handshaken = false;
  private socketFailure: { error: unknown } | undefined;
  private httpFailure: { error: unknown } | undefined;

  constructor(
    /** Neither line reached a Bayeux endpoint: the WebSocket's failure and the HTTP one. */
    private readonly unreachable: (socketFailure: unknown, httpFailure: unknown) => void,
    /** Said on stderr whatever --verbose says. */
    private readonly report: (line: string) => void,
  ) {}

  /** `ws`'s WebSocket, reporting why it could not open. */
  readonly WebSocket = ((contact: FirstContact) =>
    class extends WebSocket {
      constructor(url: string) {
        super(url, { perMessageDeflate: false });
        let opened = false;
        this.once('open', () => (opened = true));
        this.on('error', (error) => {
          if (!opened) contact.failed('socket', error);
        });
      }

      override close(code?: number, reason?: string | Buffer): void {
        if (this.readyState === WebSocket.CONNECTING) contact.failed('socket', timedOut());
        super.close(code, reason);
      }
    })(this);

  /**
   * fetch, reporting requests that reach nothing (a network error), no endpoint (HTTP 404), no
   * answer, or an answer that is not Bayeux; until the first session, a proxy's 502/503/504 is
   * said each time (the client retries it with backoff).
   */
  readonly fetch: typeof fetch = async (input, init) => {
    let response: Response;
    try {
      response = await fetch(input, init);
    } catch (error) {
      this.failed('http', init?.signal?.aborted === true ? timedOut() : error);
      throw error;
    }
    if (response.status === 404) this.failed('http', new Error(`HTTP 404 from ${String(input)}`));
    else if (!this.handshaken) await this.inspect(String(input), response);
    return response;
  };

  /** Before the first session, an answer is read twice: here, to tell Bayeux from anything else, and by the client. */
  private async inspect(url: string, response: Response): Promise<void> {
    let text: string;
    try {
      text = await response.clone().text();
    } catch {
      return; // aborted or cut: the client sees that itself
    }
    if (isBayeux(text)) return;
    const what = described(response, text);
    if (GATEWAY_STATUSES.has(response.status)) {
      const retryAfter = response.headers.get('retry-after');
      this.report(`${url} answered ${what}${retryAfter !== null ? `, Retry-After: ${retryAfter}` : ''}, not Bayeux: a proxy whose server is down or busy? Trying again within ${seconds(MAX_RECONNECT_DELAY)}`);
      return;
    }
    this.failed('http', new NotBayeux(`${url} answered ${what}, which is not a Bayeux reply: is it the address of a Bayeux server? (--url, PERIHELION_URL; --path, PERIHELION_PATH)`));
  }

  failed(kind: 'socket' | 'http', error: unknown): void {
    if (this.reached) return;
    if (kind === 'socket') this.socketFailure ??= { error };
    else this.httpFailure ??= { error };
    if (this.socketFailure && this.httpFailure) this.unreachable(this.socketFailure.error, this.httpFailure.error);
  }
}

async function subscribe(pattern: string, flags: SubscribeFlags, env: NodeJS.ProcessEnv): Promise<number> {
  const problem = channelProblem(pattern);
  if (problem) throw new UsageError(`invalid channel ${JSON.stringify(pattern)}: ${problem}${isAddress(pattern) ? `\n${urlGoesInFlag('subscribe', '<pattern>')}` : ''}`);
  if (isMeta(pattern)) throw new UsageError(`meta channels cannot be subscribed to (${pattern})`);
  let count = Infinity;
  if (flags.count !== undefined) {
    if (!/^\d+$/.test(flags.count) || Number(flags.count) < 1) throw new UsageError(`--count must be a whole number from 1, got ${JSON.stringify(flags.count)}`);
    count = Number(flags.count);
  }
  if (flags.positions === true && flags.dataOnly === true) throw new UsageError('--positions adds the position to each line, --data-only prints the data alone: choose one');
  const since = sinceOf(pattern, flags.since ?? []);
  let transportRetry: number | undefined;
  if (flags.transportRetry !== undefined) {
    if (!/^\d+$/.test(flags.transportRetry)) throw new UsageError(`--transport-retry must be a whole number of milliseconds, got ${JSON.stringify(flags.transportRetry)}`);
    transportRetry = Number(flags.transportRetry);
  }
  const base = serverUrl(flags.url, env);
  const path = flagOrEnv(flags.path, env.PERIHELION_PATH) ?? DEFAULT_PATH;
  if (!path.startsWith('/')) throw new UsageError(`the path must start with "/", got ${JSON.stringify(path)}`);
  const token = flagOrEnv(flags.token, env.PERIHELION_TOKEN);
  const url = endpoint(base, path, 'http');
  const socketUrl = endpoint(base, path, 'ws');
  const status = (line: string): void => {
    if (flags.verbose === true) warn(line);
  };
  /** What a reader of the output must know, --verbose or not. */
  const warn = (line: string): void => void process.stderr.write(`perihelion: ${line}\n`);

  let finish!: (outcome: number | CommandFailure) => void;
  const finished = new Promise<number>((resolve, reject) => {
    finish = (outcome) => (typeof outcome === 'number' ? resolve(outcome) : reject(outcome));
  });

  // An HTTP answer that is not Bayeux says more than the WebSocket's refused upgrade.
  const contact = new FirstContact(
    (socketFailure, httpFailure) => void end(new CommandFailure(httpFailure instanceof NotBayeux ? httpFailure.message : networkProblem(socketFailure, socketUrl))),
    (line) => process.stderr.write(`perihelion: ${line}\n`),
  );
  const client = new Client(url, {
    WebSocket: contact.WebSocket,
    fetch: contact.fetch,
    autoConnect: false,
    minReconnectDelay: MIN_RECONNECT_DELAY,
    maxReconnectDelay: MAX_RECONNECT_DELAY,
    ...(transportRetry !== undefined ? { transportRetry } : {}),
    ...(token !== undefined ? { token } : {}),
  });

  let stopping = false;
  let subscription: Subscription | undefined;
  let subscribing = false;
  let restart: NodeJS.Timeout | undefined;
  let restarts = 0;
  let connectedAt = 0;
  let printed = 0;
  /** The session whose subscription was reported. */
  let subscribedIn: string | null = null;

  /** Ends the session (with /meta/disconnect when connected), then the command. */
  function end(failure?: CommandFailure): void {
    if (stopping) return;
    stopping = true;
    clearTimeout(restart);
    if (client.state === 'connected') status('disconnecting');
    void client.disconnect().finally(() => finish(failure ?? 0));
  }

  function print(data: unknown, message: Message): void {
    if (printed >= count) return;
    printed++;
    const position = flags.positions === true ? asPosition(message.ext?.position) : null;
    process.stdout.write(`${JSON.stringify(flags.dataOnly === true ? data : position ? { channel: message.channel, data, position: formatPosition(position) } : { channel: message.channel, data })}\n`);
    if (printed >= count) end();
  }

  // Once subscribed, the client subscribes again by itself in every new session.
  function subscribeOnce(): void {
    subscribing = true;
    client.subscribe(pattern, print, since !== undefined ? { since } : {}).then(
      (held) => {
        subscribing = false;
        subscription = held;
      },
      (error: unknown) => {
        subscribing = false;
        if (stopping) return;
        const code = error instanceof ClientError ? error.code : undefined;
        if (code === 'bayeux') return end(new CommandFailure(`subscription to ${pattern} refused: ${(error as ClientError).bayeux || (error as Error).message}`));
        if (code === 'timeout') {
          status(`${(error as Error).message}; subscribing again`);
          return subscribeOnce();
        }
        // The client stopped, and its 'disconnected' event says why (handled below).
        if (code === 'disconnected' || code === 'handshake-denied' || code === 'no-transport') return;
        end(new CommandFailure(error instanceof Error ? error.message : String(error)));
      },
    );
  }

  function refusal(error: ClientError): CommandFailure {
    if (error.code === 'handshake-denied') return new CommandFailure(`handshake refused: ${error.bayeux || error.message}`);
    if (error.code === 'bayeux') return new CommandFailure(`connect refused: ${error.bayeux || error.message}`);
    return new CommandFailure(error.message);
  }

  client.addExtension({
    outgoing(message) {
      if (message.channel === '/meta/handshake') status(`handshaking with ${url} over ${client.transport ?? 'no transport'}`);
      return message;
    },
    incoming(message) {
      contact.reached = true;
      if (message.channel === '/meta/handshake' && !contact.handshaken) {
        if (message.successful === true) contact.handshaken = true;
        // Refused for now (a full server: 503 overloaded): the client tries again, not sooner
        // than the server advises. A final refusal (reconnect "none") ends the command below.
        else if (message.advice?.reconnect !== 'none') {
          const interval = message.advice?.interval;
          const when = typeof interval === 'number' && interval > 0 ? `in ${seconds(interval)} or more, as the server advises (interval ${interval} ms)` : `within ${seconds(MAX_RECONNECT_DELAY)}`;
          process.stderr.write(`perihelion: handshake refused: ${message.error ?? 'no reason given'}; trying again ${when}\n`);
        }
      }
      // Once per session: the same session subscribes again after a lost line or a move, and the
      // recovery (or nothing, when nothing was missed) is the news then.
      // (The reply to a subscribe sent with the handshake comes before the client knows its id.)
      const session = message.clientId ?? client.clientId ?? '';
      if (message.channel === '/meta/subscribe' && message.successful === true && message.subscription === pattern && session !== subscribedIn) {
        subscribedIn = session;
        status(`subscribed to ${pattern}`);
      }
      return message;
    },
  });
  client.on('connected', ({ transport }) => {
    connectedAt = Date.now();
    status(`connected over ${transport ?? 'no transport'}, session ${client.clientId ?? 'unknown'}`);
  });
  client.on('transport', ({ transport, previous }) => status(`moved from ${previous} to ${transport}, same session`));
  client.on('connecting', ({ previous, reason }) => {
    if (previous !== 'connected' || stopping) return;
    // The client's first attempt after losing a line waits at most its minimum delay.
    if (reason.startsWith('gap ')) status(`${reason}; starting a new session that recovers them`);
    else status(`${reason}; reconnecting in 0–${seconds(MIN_RECONNECT_DELAY)}`);
  });
  client.on('disconnected', ({ reason, error }) => {
    if (stopping) return;
    if (error) return end(refusal(error));
    // The server ended the session without refusing the client: start a new one, after a pause
    // that grows while sessions keep ending at once.
    if (connectedAt > 0 && Date.now() - connectedAt >= STEADY_MS) restarts = 0;
    const wait = Math.min(MIN_RECONNECT_DELAY * 2 ** restarts++, MAX_RECONNECT_DELAY);
    status(`${reason === 'server: reconnect none' ? 'the server ended the session' : reason}; starting a new one in ${seconds(wait)}`);
    restart = setTimeout(() => {
      void client.connect().catch(() => {});
      if (subscription === undefined && !subscribing) subscribeOnce();
    }, wait);
  });
  client.on('recovery', ({ pattern: recovered, recovered: complete, channels }) => {
    // A pattern's channels all recovered, yet not whole: a channel it never heard of may have been missed.
    const why = Object.values(channels).every(Boolean) ? 'a channel first used while away cannot be asked for' : 'the server no longer holds them';
    if (complete) status(`recovered what ${recovered} missed`);
    else warn(`some messages on ${recovered} may have been lost (${why})`);
  });
  client.on('error', (error) => {
    if (error.code === 'bayeux') return end(new CommandFailure(`subscription to ${pattern} refused: ${error.bayeux || error.message}`));
    status(`${error.message}; subscribing again`);
    subscription = undefined;
    if (!subscribing) subscribeOnce();
  });

  // Ending the session politely ends the command with 0; a second signal ends it at once.
  const stop = (): void => end();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // The reader went away (`| head -n 3`): nothing more to print to.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') stop();
  });

  void client.connect().catch(() => {});
  subscribeOnce();
  return finished;
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
    .option('--transport-retry <ms>', 'fallen back to HTTP, try the WebSocket again after this long (default 60000, plus up to half again; 0: only once HTTP fails too)')
    .option('--verbose', 'report the connection on stderr: session, subscription, reconnects, moves to a WebSocket')
    .option('--positions', 'add each message\'s position in its channel ("position":"epoch:offset") to its line, for a later --since')
    .option(
      '--since <position>',
      'start after this position of the channel (epoch:offset): what was published since is printed first (from the server\'s history; said on stderr when it no longer holds all of it); for a pattern, <channel>=<epoch:offset>, once per channel',
      (value: string, earlier: string[] = []) => [...earlier, value],
    )
    .addHelpText(
      'after',
      `
Each message is printed as {"channel":…,"data":…} (with --data-only, its data) on one line. It
connects over WebSocket, or over HTTP (streaming, else long-polling) where WebSockets are blocked,
and moves the same session to a WebSocket that opens later (see --transport-retry). The session
follows the server's advice: it starts a new session and subscribes again when the server ends or
forgets its session, and reconnects after a random wait of up to 1 s, 2 s, 4 s, … (at most 10 s)
when the connection drops, recovering the messages it missed. Until the first session, each retry
after a proxy's 502/503/504 or a handshake refused for now (a full server) is said on stderr.
To resume where an earlier run stopped, keep the position of the last line it printed
(--positions) and give it to --since. SIGINT or SIGTERM ends the session and exits 0. Exit codes: 0 done, 1 the server refused (the
error is printed), could not be reached or is not a Bayeux server, 2 a usage error.

Examples:
  perihelion subscribe '/news/**' | jq
  perihelion subscribe /chat/lobby --data-only --count 1
  perihelion subscribe /orders --positions --since "$(tail -n 1 orders.log | jq -r .position)"
  perihelion subscribe '/orders/*' --since /orders/eu=k3x9pa:40 --since /orders/us=k3x9pa:12
  perihelion subscribe /prices/ACME --url https://push.example.com --path /cometd --verbose
  PERIHELION_TOKEN=eyJ… perihelion subscribe '/user/42/**'`,
    )
    .action((pattern: string, flags: SubscribeFlags) => runAction(() => subscribe(pattern, flags, process.env)));
  return usageExitsWith2(command);
}

/**
 * The positions of `--since`: for a channel, one `epoch:offset` (or `<channel>=epoch:offset`); for
 * a pattern, `<channel>=epoch:offset` for each channel under it to resume, as `--positions` prints
 * them. A UsageError says what is wrong with any.
 */
function sinceOf(pattern: string, values: readonly string[]): Position | Record<string, Position> | undefined {
  if (values.length === 0) return undefined;
  const byChannel: Record<string, Position> = {};
  for (const value of values) {
    const at = value.indexOf('=');
    const channel = at === -1 ? pattern : value.slice(0, at);
    const position = parsePosition(at === -1 ? value : value.slice(at + 1));
    if (isWildcard(pattern) && at === -1) throw new UsageError(`--since for a pattern names the channel: <channel>=<epoch:offset>, as --positions prints them (each channel of ${pattern} has positions of its own), got ${JSON.stringify(value)}`);
    if (position === null) throw new UsageError(`--since must be a position epoch:offset, as --positions prints it${isWildcard(pattern) ? ', after <channel>=' : ''}, got ${JSON.stringify(value)}`);
    if (isWildcard(channel) || channelProblem(channel, { allowWildcard: false }) !== null || !matches(pattern, channel)) {
      throw new UsageError(`--since ${JSON.stringify(value)}: ${JSON.stringify(channel)} is not a channel of ${pattern}`);
    }
    if (Object.hasOwn(byChannel, channel)) throw new UsageError(`--since gives ${channel} twice`);
    byChannel[channel] = position;
  }
  return isWildcard(pattern) ? byChannel : byChannel[pattern];
}
