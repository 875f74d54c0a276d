/**
 * The Redis engine's two connections (one for commands and scripts, one subscribed to the bus) and
 * their health, to one Redis or to a Redis Cluster (there, each is an ioredis Cluster client: the
 * subscriber keeps one connection per shard, for sharded pub/sub).
 *
 * Commands fail fast while Redis is away (no offline queue) and are never sent twice: a publish
 * script resent after a reconnect could publish twice. On a Redis Cluster, the client sends a
 * command again when the connection to its shard is found closed (a shard failing over, or one
 * not connected yet): a publish cut off in the moment its shard fails may then run twice. Meanwhile the node serves its own sessions,
 * and the loss is reported once per outage through the server's 'error' event; the connections
 * come back with backoff. At start a failure is final instead: a clear error beats a silent wait.
 */
import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { PerihelionError } from '../errors.js';
import { REPORT_EVERY_MS, ReportThrottle } from '../report-throttle.js';
import { describeUrl, redisUrls, type RedisEngineOptions } from './redis-options.js';
import { SCRIPTS, type ScriptName } from './redis-scripts.js';

/** Each script's SHA1, as EVALSHA names it. */
const SHAS = new Map(Object.entries(SCRIPTS).map(([name, lua]) => [name as ScriptName, createHash('sha1').update(lua).digest('hex')]));

export interface ConnectionHost {
  /** A message on one of the subscribed pub/sub channels. */
  onMessage(channel: string, text: string): void;
  /** The command connection is back after a loss: Redis may have forgotten this node meanwhile. */
  onReconnect(): void;
  /**
   * The subscriber connection is lost: whatever Redis published before will never be heard here
   * (the subscription that comes back hears only what is published after it).
   */
  deaf(): void;
  /** The subscriber connection subscribed again after a loss: what was published meanwhile was not heard here. */
  hearingAgain(): void;
  /** A failure the engine survived: the server's 'error' event. */
  report(error: unknown): void;
  /** Redis answers again after failures `report` was told of: the server's 'restored' event. */
  restored(message: string): void;
  /**
   * Redis is taken for away (see `lost`): what this node does meanwhile is not written there, and
   * is to be recorded afresh once it answers.
   */
  outage(): void;
}

export class RedisConnection {
  private cmd: Redis | null = null;
  private sub: Redis | null = null;
  private started = false;
  private closing = false;
  /**
   * Set once a loss of Redis has been reported (the connection dropped, or a command found it
   * hung); cleared when the connection is back or a heartbeat goes through. Meanwhile the node
   * serves its own sessions without asking Redis (`readyCmd` is null).
   */
  private outage = false;
  /** Reports of `degraded`, at most one per REPORT_EVERY_MS. */
  private readonly degradedReports = new ReportThrottle(REPORT_EVERY_MS);
  /** When the first failure reported since Redis last answered a heartbeat happened; null: none. */
  private troubleSince: number | null = null;
  /** A heartbeat went through since `troubleSince`: 'restored' is said once this node hears the bus too. */
  private answering = false;
  /**
   * The bus subscription this node hears by: a new number each time it subscribes (again), 0 from
   * the subscriber connection's loss until Redis has answered the SUBSCRIBE sent again once it is
   * back (see its 'ready'). A message Redis published is heard only by the subscription that was in
   * place then: see `subscription`.
   */
  private subscribedAs = 0;
  private subscriptions = 0;
  /** Connections of a Redis Cluster's subscriber that ended (see watchShards). */
  private shardLosses = 0;

  constructor(
    private readonly options: Required<RedisEngineOptions>,
    /** Names the connections in Redis's CLIENT LIST. */
    private readonly name: string,
    private readonly host: ConnectionHost,
  ) {}

  /**
   * Connects both, subscribes to `channels`, then runs `init` (the node's first heartbeat); a
   * failure of any step rejects with ERR_ENGINE_UNAVAILABLE saying why.
   */
  async open(channels: readonly string[], init: () => Promise<void>): Promise<void> {
    const cmd = await this.connect('cmd');
    const sub = await this.connect('sub');
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
      await this.checkServer(cmd);
      if (this.options.cluster) {
        sub.on('smessage', (channel: string, text: string) => this.host.onMessage(channel, text));
        // One SSUBSCRIBE per channel: each may hash to another shard.
        for (const channel of channels) await sub.ssubscribe(channel);
      } else {
        sub.on('message', (channel: string, text: string) => this.host.onMessage(channel, text));
        await sub.subscribe(...channels);
      }
      this.subscribedAs = ++this.subscriptions;
      await init();
    } catch (error) {
      cmd.disconnect();
      sub.disconnect();
      this.cmd = this.sub = null;
      let reason = (error as Error).message === 'Connection is closed.' && lastError ? lastError.message : (error as Error).message;
      if (this.options.cluster && /None of startup nodes is available/.test(reason)) reason = await this.whyNoClusterNode(reason);
      throw new PerihelionError('ERR_ENGINE_UNAVAILABLE', `cannot use Redis at ${describeUrl(this.options.url)}: ${reason}`);
    }
    this.started = true;
    // After a reconnect Redis may have lost everything (a restart) or the others may have taken
    // this node for dead.
    cmd.on('ready', () => {
      if (!this.started || this.closing) return;
      this.outage = false;
      this.host.onReconnect();
    });
    if (this.options.cluster) return this.watchShards(sub, channels);
    sub.on('close', () => {
      if (this.subscribedAs === 0) return;
      this.subscribedAs = 0;
      this.host.deaf();
    });
    sub.on('ready', () => {
      if (!this.started || this.closing) return;
      // Subscribed again here, not by ioredis (autoResubscribe is off for this connection): it
      // renews only the channels whose SUBSCRIBE Redis had answered on the connection before, so a
      // line cut between its SUBSCRIBE and the answer left the node subscribed to nothing, and
      // deaf for good, while 'ready'. Once Redis answers, whatever is published comes back here.
      sub.subscribe(...channels).then(
        () => {
          if (sub.status !== 'ready' || this.subscribedAs !== 0) return;
          this.subscribedAs = ++this.subscriptions;
          this.host.hearingAgain();
          this.sayRestored();
        },
        () => {}, // lost again: the next 'ready' tries again
      );
    });
  }

  /**
   * On a Redis Cluster the subscriber is a connection per shard, which ioredis makes again itself
   * when one ends (a shard restarted or failed over, its line cut) and subscribes again to that
   * shard's channels; the client's own status says nothing of it. What the shard published
   * meanwhile was not heard here, so the end of any of its connections is taken for a loss of the
   * bus, as the loss of one Redis's subscriber is (the node catches its sessions up), and the node
   * hears the bus again once every channel's SSUBSCRIBE, sent again here, has been answered with no
   * connection lost meanwhile.
   */
  private watchShards(sub: Redis, channels: readonly string[]): void {
    const lost = (): void => {
      if (!this.started || this.closing) return;
      this.shardLosses++;
      if (this.subscribedAs === 0) return;
      this.subscribedAs = 0;
      this.host.deaf();
      this.resubscribeShards(sub, channels, 0);
    };
    sub.on('-node', lost);
    sub.on('close', lost);
  }

  /** Subscribes to every channel again, after 100 ms and doubling up to 2 s, until it holds. */
  private resubscribeShards(sub: Redis, channels: readonly string[], tried: number): void {
    const timer = setTimeout(() => {
      if (this.closing || this.subscribedAs !== 0) return;
      const losses = this.shardLosses;
      const renewed = sub.status === 'ready' ? Promise.all(channels.map((channel) => sub.ssubscribe(channel))) : Promise.reject(new Error('not connected'));
      renewed.then(
        () => {
          if (this.closing || this.subscribedAs !== 0) return;
          // A connection ended while they were answered: the answers may have come on it.
          if (this.shardLosses !== losses) return this.resubscribeShards(sub, channels, tried + 1);
          this.subscribedAs = ++this.subscriptions;
          this.host.hearingAgain();
          this.sayRestored();
        },
        () => this.resubscribeShards(sub, channels, tried + 1),
      );
    }, Math.min(100 * 2 ** tried, 2000));
    timer.unref();
  }

  /**
   * A client for one role, not connected yet: a Redis client, or on a cluster a Cluster client
   * (typed as a Redis client: both take the same commands).
   */
  private async connect(role: string): Promise<Redis> {
    const { Redis: RedisClient, Cluster: ClusterClient } = await import('ioredis');
    const retry = (times: number): number | null => (this.started && !this.closing ? Math.min(100 * times, 2000) : null);
    const options = {
      lazyConnect: true,
      connectionName: `${this.name}:${role}`,
      connectTimeout: this.options.connectTimeout,
      // The subscriber of one Redis subscribes again itself (see its 'ready'), and has no
      // timeout: a slow answer to that SUBSCRIBE only keeps `hearing` false a while longer.
      ...(role === 'sub' && !this.options.cluster ? { autoResubscribe: false } : { commandTimeout: this.options.commandTimeout }),
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      retryStrategy: retry,
    };
    if (!this.options.cluster) return new RedisClient(this.options.url, options);
    const urls = redisUrls(this.options).map((url) => new URL(url));
    const [first] = urls;
    const cluster: Cluster = new ClusterClient(
      urls.map((url) => ({ host: url.hostname, port: Number(url.port || 6379) })),
      {
        lazyConnect: true,
        enableOfflineQueue: false,
        shardedSubscribers: role === 'sub',
        clusterRetryStrategy: retry,
        slotsRefreshTimeout: this.options.connectTimeout,
        redisOptions: {
          ...options,
          ...(first!.username ? { username: decodeURIComponent(first!.username) } : {}),
          ...(first!.password ? { password: decodeURIComponent(first!.password) } : {}),
          ...(first!.protocol === 'rediss:' ? { tls: {} } : {}),
        },
      },
    );
    return cluster as unknown as Redis;
  }

  /** Refuses a Redis too old, and a Redis Cluster node reached as one Redis (its scripts would fail on every other slot). */
  private async checkServer(cmd: Redis): Promise<void> {
    if (!this.options.cluster && /cluster_enabled:1/.test(await cmd.info('cluster'))) {
      throw new Error('it is a node of a Redis Cluster: give the cluster option (--redis-cluster), and any of its nodes in the URL');
    }
    // The URL's database, selected again: a number this Redis does not have fails only in the
    // client's connect handshake, which goes on in database 0 (someone else's keys, perhaps).
    const db = this.options.cluster ? '' : new URL(this.options.url).pathname.slice(1);
    if (db !== '') {
      await cmd.select(Number(db)).catch((error: Error) => {
        throw new Error(`database ${db} cannot be selected (${error.message}): this Redis has fewer databases (its \`databases\` setting)`);
      });
    }
    const info = await cmd.info('server');
    const version = /redis_version:(\d+)\.(\d+)/.exec(info);
    if (!version) return;
    const [major, minor] = [Number(version[1]), Number(version[2])];
    if (this.options.cluster && major < 7) throw new Error(`Redis ${major}.${minor} is too old for a cluster; sharded pub/sub (SPUBLISH) needs 7 or later`);
    if (major < 6 || (major === 6 && minor < 2)) throw new Error(`Redis ${major}.${minor} is too old; the engine needs 6.2 or later (XTRIM MINID)`);
  }

  /**
   * Why a cluster client found no node: the first URL is often a plain Redis (cluster mode off),
   * or nothing answers there; says which, else `reason` as it was.
   */
  private async whyNoClusterNode(reason: string): Promise<string> {
    const { Redis: RedisClient } = await import('ioredis');
    const [url] = redisUrls(this.options);
    const probe = new RedisClient(url!, { lazyConnect: true, connectTimeout: this.options.connectTimeout, maxRetriesPerRequest: 0, retryStrategy: () => null });
    let failure: Error | undefined;
    probe.on('error', (error: Error) => (failure ??= error));
    try {
      await probe.connect();
      const info = await probe.info('cluster');
      if (/cluster_enabled:0/.test(info)) return `${describeUrl(url!)} is a Redis without cluster mode: leave out the cluster option (--redis-cluster)`;
      return reason;
    } catch (error) {
      return `${reason} (${describeUrl(url!)}: ${(failure ?? (error as Error)).message})`;
    } finally {
      probe.disconnect();
    }
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

  /** From the start of `open` (unless it failed) until `close` has ended. */
  get opened(): boolean {
    return this.cmd !== null;
  }

  /**
   * The command connection, if it can take a command now: connected, and Redis not taken for away.
   * A Redis that hung keeps its connection; once a command has found it so, the node stops
   * asking it (each request would wait `commandTimeout`) until a heartbeat goes through.
   */
  readyCmd(): Redis | null {
    return this.outage ? null : this.connectedCmd();
  }

  /** The command connection while it is connected, Redis away or not: for the heartbeat that finds out. */
  connectedCmd(): Redis | null {
    return this.cmd?.status === 'ready' ? this.cmd : null;
  }

  /** Whether this node hears the bus now: connected, and subscribed again after a loss. */
  get hearing(): boolean {
    return this.subscription !== 0;
  }

  /**
   * The subscription this node hears the bus by now, 0 if none: a message Redis publishes while
   * it is in place comes back to this node if the same subscription is still in place when Redis
   * has answered the publish. (On a Redis Cluster one number stands for the shards' connections
   * together: a new one once each has been subscribed again after any of them ended.)
   */
  get subscription(): number {
    if (this.sub?.status !== 'ready') return 0;
    return this.subscribedAs;
  }

  /**
   * Runs a script on the shard that holds `prefix`'s slot (see redis-layout.ts): the prefix is its
   * one declared key and its first argument.
   */
  async script(name: ScriptName, prefix: string, args: Array<string | number>): Promise<unknown> {
    const cmd = this.cmd;
    if (!cmd) throw new PerihelionError('ERR_ENGINE_CLOSED', 'the Redis engine is closed');
    try {
      try {
        return await cmd.evalsha(SHAS.get(name)!, 1, prefix, prefix, ...args);
      } catch (error) {
        // Not loaded there yet (a new shard, a restart, SCRIPT FLUSH): nothing ran, so send it whole
        // once; Redis keeps it for the next EVALSHA.
        if (!String((error as Error).message).startsWith('NOSCRIPT')) throw error;
        return await cmd.eval(SCRIPTS[name], 1, prefix, prefix, ...args);
      }
    } catch (error) {
      this.failed(error);
      throw error;
    }
  }

  /**
   * A command failed: one that timed out found Redis hung, which is taken for away (`lost`). At
   * start a failure is final instead (`open` rejects).
   */
  failed(error: unknown): void {
    if (this.started && timedOut(error)) this.lost(error);
  }

  /** Publishes `text` on the pub/sub channel `channel` (sharded on a cluster); resolves to how many heard it. */
  send(cmd: Redis, channel: string, text: string): Promise<number> {
    return this.options.cluster ? (cmd.spublish(channel, text) as Promise<number>) : cmd.publish(channel, text);
  }

  /** A read of shared state; while Redis is away, this node's own view (reported). */
  async read<T>(what: string, query: (cmd: Redis) => Promise<T>, fallback?: () => T): Promise<T> {
    const cmd = this.readyCmd();
    if (cmd) {
      try {
        return await query(cmd);
      } catch (error) {
        this.failed(error);
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
    // A command that timed out was sent `commandTimeout` earlier: Redis stopped answering then.
    this.troubled(timedOut(error) ? Date.now() - this.options.commandTimeout : Date.now());
    this.host.outage();
    const what = timedOut(error)
      ? `Redis answered nothing within ${this.options.commandTimeout} ms (commandTimeout); serving this node's sessions only until it answers again`
      : "lost the connection to Redis; serving this node's sessions only until it is back";
    this.host.report(unavailable(what, error));
  }

  /**
   * A Redis-side change that could not be made; the node carries on with its local state. Before
   * the loss is known (`lost`: the reconnect's first error, up to a second after the line went)
   * every publish of a busy node lands here: the first is reported at once, the rest counted
   * into a report at most every 10 s.
   */
  degraded(error: unknown): void {
    this.failed(error);
    if (this.outage) return;
    const count = this.degradedReports.count();
    if (count === 0) return;
    const what = `Redis is unreachable; serving this node's sessions only${count === 1 ? '' : ` (${count} times since the last report, the last)`}`;
    this.host.report(unavailable(what, error));
  }

  /** A failure to reach Redis was reported (ERR_ENGINE_UNAVAILABLE): `healthy` will say when it answers again. */
  troubled(since = Date.now()): void {
    this.troubleSince ??= since;
    this.answering = false;
  }

  /**
   * Why Redis is away as far as this node knows (a loss or a failure reported, and no heartbeat
   * through since, which would have recorded this node's sessions again); null while it answers.
   */
  away(): string | null {
    if (this.troubleSince === null || this.closing) return null;
    const seconds = (Date.now() - this.troubleSince) / 1000;
    return `Redis at ${describeUrl(this.options.url)} has not answered for ${seconds.toFixed(1)} s; this node serves its own sessions only`;
  }

  /**
   * A heartbeat went through, this node's sessions recorded. Whatever the connection's state: a
   * heartbeat that went through is Redis answering.
   */
  healthy(): void {
    if (this.troubleSince === null || this.closing) return;
    // A Redis that hung (stopped, not gone) never drops the connection, so no reconnect ends
    // the outage: this does, and the next failure is reported again.
    this.outage = false;
    this.answering = true;
    this.sayRestored();
  }

  /**
   * After reported failures, the operator is told that Redis answers again (once, however many
   * failures there were), when it does and this node hears the bus again: only then is what is
   * published anywhere delivered here too.
   */
  private sayRestored(): void {
    if (this.troubleSince === null || !this.answering || !this.hearing || this.closing) return;
    const seconds = (Date.now() - this.troubleSince) / 1000;
    this.troubleSince = null;
    this.answering = false;
    this.host.restored(`Redis at ${describeUrl(this.options.url)} answers again, ${seconds.toFixed(1)} s after the first failure; this node's sessions are recorded there`);
  }
}

/** Whether a command failed for want of an answer within `commandTimeout` (ioredis's error). */
function timedOut(error: unknown): boolean {
  return error instanceof Error && error.message === 'Command timed out';
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
