/**
 * The Redis engine's two connections (one for commands and scripts, one subscribed to the bus) and
 * their health.
 *
 * Commands fail fast while Redis is away (no offline queue) and are never sent twice: a publish
 * script resent after a reconnect could publish twice. Meanwhile the node serves its own sessions,
 * and the loss is reported once per outage through the server's 'error' event; the connections
 * come back with backoff. At start a failure is final instead: a clear error beats a silent wait.
 */
import type { Redis } from 'ioredis';
import { PerihelionError } from '../errors.js';
import { describeUrl, type RedisEngineOptions } from './redis-options.js';
import { SCRIPTS, type ScriptName } from './redis-scripts.js';

export interface ConnectionHost {
  /** A message on one of the subscribed pub/sub channels. */
  onMessage(channel: string, text: string): void;
  /** The command connection is back after a loss: Redis may have forgotten this node meanwhile. */
  onReconnect(): void;
  /** A failure the engine survived: the server's 'error' event. */
  report(error: unknown): void;
}

export class RedisConnection {
  private cmd: Redis | null = null;
  private sub: Redis | null = null;
  private readonly shas = new Map<ScriptName, string>();
  private started = false;
  private closing = false;
  /** Set once a loss of Redis has been reported, cleared when the connection is back. */
  private outage = false;

  constructor(
    private readonly options: Required<RedisEngineOptions>,
    /** Names the connections in Redis's CLIENT LIST. */
    private readonly name: string,
    private readonly host: ConnectionHost,
  ) {}

  /**
   * Connects both, loads the scripts, subscribes to `channels`, then runs `init` (the node's first
   * heartbeat); a failure of any step rejects with ERR_ENGINE_UNAVAILABLE saying why.
   */
  async open(channels: readonly string[], init: () => Promise<void>): Promise<void> {
    const { Redis: RedisClient } = await import('ioredis');
    const connect = (role: string): Redis =>
      new RedisClient(this.options.url, {
        lazyConnect: true,
        connectionName: `${this.name}:${role}`,
        connectTimeout: this.options.connectTimeout,
        commandTimeout: this.options.commandTimeout,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        autoResendUnfulfilledCommands: false,
        retryStrategy: (times: number) => (this.started && !this.closing ? Math.min(100 * times, 2000) : null),
      });
    const cmd = connect('cmd');
    const sub = connect('sub');
    this.cmd = cmd;
    this.sub = sub;
    let lastError = null as Error | null;
    const onError = (error: Error): void => {
      lastError = error;
      if (this.started) this.lost(error);
    };
    cmd.on('error', onError);
    sub.on('error', onError);
    try {
      await Promise.all([cmd.connect(), sub.connect()]);
      const info = await cmd.info('server');
      const version = /redis_version:(\d+)\.(\d+)/.exec(info);
      if (version && (Number(version[1]) < 6 || (Number(version[1]) === 6 && Number(version[2]) < 2))) {
        throw new Error(`Redis ${version[1]}.${version[2]} is too old; the engine needs 6.2 or later (XTRIM MINID)`);
      }
      for (const [name, lua] of Object.entries(SCRIPTS)) this.shas.set(name as ScriptName, (await cmd.script('LOAD', lua)) as string);
      sub.on('message', (channel: string, text: string) => this.host.onMessage(channel, text));
      await sub.subscribe(...channels);
      await init();
    } catch (error) {
      cmd.disconnect();
      sub.disconnect();
      this.cmd = this.sub = null;
      const reason = (error as Error).message === 'Connection is closed.' && lastError ? lastError.message : (error as Error).message;
      throw new PerihelionError('ERR_ENGINE_UNAVAILABLE', `cannot use Redis at ${describeUrl(this.options.url)}: ${reason}`);
    }
    this.started = true;
    // After a reconnect Redis may have lost everything (a restart) or the others may have taken
    // this node for dead. ioredis resubscribes the pub/sub channels by itself.
    cmd.on('ready', () => {
      if (!this.started || this.closing) return;
      this.outage = false;
      this.host.onReconnect();
    });
  }

  /**
   * Runs `farewell` while Redis can still be reached (the node removing itself), then closes both
   * connections. Nothing is reported as a loss from now on.
   */
  async close(farewell: () => Promise<void>): Promise<void> {
    this.closing = true;
    const { cmd, sub } = this;
    if (this.readyCmd()) {
      try {
        await farewell();
      } catch (error) {
        this.host.report(error);
      }
    }
    await Promise.allSettled([quit(cmd), quit(sub)]);
    this.cmd = this.sub = null;
  }

  /** The prefix of every key and pub/sub channel. */
  get prefix(): string {
    return this.options.prefix;
  }

  /** From the start of `open` (unless it failed) until `close` has ended. */
  get opened(): boolean {
    return this.cmd !== null;
  }

  /** The command connection, if it can take a command now. */
  readyCmd(): Redis | null {
    return this.cmd?.status === 'ready' ? this.cmd : null;
  }

  /** Whether this node hears the bus now. */
  get hearing(): boolean {
    return this.sub?.status === 'ready';
  }

  async script(name: ScriptName, args: Array<string | number>): Promise<unknown> {
    const cmd = this.cmd;
    if (!cmd) throw new PerihelionError('ERR_ENGINE_CLOSED', 'the Redis engine is closed');
    const all = [this.options.prefix, ...args];
    try {
      return await cmd.evalsha(this.shas.get(name)!, 0, ...all);
    } catch (error) {
      // Redis restarted (or SCRIPT FLUSH): load the script again, once.
      if (!String((error as Error).message).startsWith('NOSCRIPT')) throw error;
      this.shas.set(name, (await cmd.script('LOAD', SCRIPTS[name])) as string);
      return cmd.evalsha(this.shas.get(name)!, 0, ...all);
    }
  }

  /** A read of shared state; while Redis is away, this node's own view (reported). */
  async read<T>(what: string, query: (cmd: Redis) => Promise<T>, fallback?: () => T): Promise<T> {
    const cmd = this.readyCmd();
    if (cmd) {
      try {
        return await query(cmd);
      } catch (error) {
        if (!fallback || this.readyCmd()) throw unavailable(`cannot read ${what}`, error);
      }
    }
    if (!fallback) throw unavailable(`cannot read ${what}`);
    this.degraded(new Error(`answered ${what} from this node alone`));
    return fallback();
  }

  /** Redis is unreachable: reported once per outage. */
  lost(error: unknown): void {
    if (this.outage || this.closing) return;
    this.outage = true;
    this.host.report(unavailable("lost the connection to Redis; serving this node's sessions only until it is back", error));
  }

  /** A Redis-side change that could not be made; the node carries on with its local state. */
  degraded(error: unknown): void {
    if (this.outage) return;
    this.host.report(unavailable("Redis is unreachable; serving this node's sessions only", error));
  }
}

/** ERR_ENGINE_UNAVAILABLE for `what`, with the Redis error that caused it. */
export function unavailable(what: string, cause?: unknown): PerihelionError {
  const error = new PerihelionError('ERR_ENGINE_UNAVAILABLE', cause ? `${what}: ${(cause as Error).message ?? String(cause)}` : what);
  if (cause !== undefined) (error as Error & { cause?: unknown }).cause = cause;
  return error;
}

async function quit(client: Redis | null): Promise<void> {
  if (!client) return;
  try {
    if (client.status === 'ready') await client.quit();
    else client.disconnect();
  } catch {
    client.disconnect();
  }
}
