/**
 * The Redis engine: several Perihelion processes act as one server.
 *
 * Each publish crosses Redis once. A Lua script gives the message its position (the channel's
 * epoch and the next offset), appends the final bytes to the channel's history (a stream) and
 * PUBLISHes them on one cluster channel, all in one atomic step; every node, the publishing one
 * included, delivers from its subscription to that channel, so every node sees one order. A node
 * fans out to its own sessions with its local subscription index: Redis carries one message per
 * publish, never one per subscriber.
 *
 * What is shared through Redis: positions and history, who is subscribed to what (for presence,
 * `subscribers`, `channels`), which node holds which session (for `sendTo`), and which nodes are
 * alive (heartbeats; a node silent for `nodeTimeout` has its sessions removed by the others).
 * What stays on each node: the sessions themselves, their queues and connections.
 *
 * The seam of a recovery is exact even though Redis answers asynchronously: while a subscribe's
 * history read is in flight, the session's live messages on that channel are held. The read
 * script PUBLISHes a fence to this node after reading; messages that reach the node before the
 * fence were published before the read (they are in the replay, or before the subscribe's
 * position), messages after it were published after. Once both the reply and the fence are in,
 * the replay is queued, then the held messages past the read's position.
 *
 * When Redis cannot be reached the node keeps serving its own sessions: publishes reach this
 * node's subscribers without a position, subscriptions are kept locally, and the failure is
 * reported through the server's 'error' event. When Redis is back the node registers its
 * sessions and subscriptions again.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { addToExt, isWildcard, type Message, type Position } from '@perihelion/protocol';
import type { Engine, EngineHost, Publication, RecoverRequest, SubscribeOutcome } from './engine.js';
import type { HistoryPage, HistoryQuery, Retention } from './history.js';
import { SubscriptionIndex } from './subscription-index.js';
import { SCRIPTS, type ScriptName } from './redis-scripts.js';
import { PerihelionError } from '../errors.js';

export interface RedisEngineOptions {
  /** Where Redis is: `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS). Default: redis://127.0.0.1:6379. */
  url?: string;
  /** Prefix of every key and pub/sub channel, so that several clusters can share one Redis. Default: "perihelion:". */
  prefix?: string;
  /** How often this node tells the others it is alive, ms. Default: 5000. */
  heartbeatInterval?: number;
  /** Silence after which a node counts as dead and its sessions are removed, ms. Default: 15000. */
  nodeTimeout?: number;
  /** Longest wait to connect at start, ms. Default: 5000. */
  connectTimeout?: number;
  /** Longest wait for a Redis command, or for a publish or fence to come back through Redis, ms. Default: 5000. */
  commandTimeout?: number;
}

export const REDIS_DEFAULTS = {
  url: 'redis://127.0.0.1:6379',
  prefix: 'perihelion:',
  heartbeatInterval: 5000,
  nodeTimeout: 15000,
  connectTimeout: 5000,
  commandTimeout: 5000,
} as const;

/** Sessions removed per script call when a dead node is cleaned up (keeps each call short). */
const CLEANUP_BATCH = 500;

/** A session of this node: its Redis-side changes run one after another, in call order. */
/** Session users read by one HMGET (presence of a channel may name hundreds of thousands). */
const USERS_PER_READ = 1000;

interface LocalSession {
  chain: Promise<unknown>;
  removed: boolean;
  /** Its authenticated user, for presence on every node (null: anonymous). */
  user: string | null;
}

/** Live messages of one session on one channel, held while its subscribe's read is in flight. */
interface Hold {
  clientId: string;
  channel: string;
  /** The fence came back: what arrives now was published after the read. */
  fenced: boolean;
  held: Publication[];
}

interface PendingPublish {
  publication: Publication;
  resolve: () => void;
}

export class RedisEngine implements Engine {
  readonly name = 'redis';
  /** This process's id in the cluster. */
  readonly nodeId = randomBytes(8).toString('hex');
  readonly options: Required<RedisEngineOptions>;
  private host: EngineHost | null = null;
  private cmd: Redis | null = null;
  private sub: Redis | null = null;
  private readonly shas = new Map<ScriptName, string>();
  private readonly index = new SubscriptionIndex();
  private readonly sessions = new Map<string, LocalSession>();
  private readonly holds = new Map<string, Map<string, Hold>>();
  private readonly fences = new Map<string, () => void>();
  private readonly pending = new Map<string, PendingPublish>();
  private readonly busChannel: string;
  private readonly nodeChannel: string;
  /** Marks where the position goes in a payload sent to the publish script (random: no payload can forge it). */
  private readonly placeholder = `\u0000position-${randomBytes(8).toString('hex')}\u0000`;
  private readonly placeholderJson = JSON.stringify(this.placeholder);
  private seq = 0;
  private heartbeat: NodeJS.Timeout | null = null;
  private started = false;
  private closing = false;
  /** Set once a loss of Redis has been reported, cleared when the connection is back. */
  private outage = false;

  constructor(options: RedisEngineOptions = {}) {
    this.options = { ...REDIS_DEFAULTS, ...definedOnly(options) };
    validateRedisUrl(this.options.url);
    const { prefix } = this.options;
    if (typeof prefix !== 'string') invalid(`option "prefix" must be a string, got ${JSON.stringify(prefix)}`);
    for (const key of ['heartbeatInterval', 'nodeTimeout', 'connectTimeout', 'commandTimeout'] as const) {
      const value = this.options[key];
      if (!Number.isInteger(value) || value < 10) invalid(`option "${key}" must be a whole number of ms (10 or more), got ${JSON.stringify(value)}`);
    }
    if (this.options.nodeTimeout <= this.options.heartbeatInterval) {
      invalid(`option "nodeTimeout" (${this.options.nodeTimeout}) must be longer than "heartbeatInterval" (${this.options.heartbeatInterval}), or live nodes would be taken for dead`);
    }
    this.busChannel = `${prefix}bus`;
    this.nodeChannel = `${prefix}node:${this.nodeId}`;
  }

  /** Where this engine's Redis is, without the password (for logs and start-up summaries). */
  get where(): string {
    return describeUrl(this.options.url);
  }

  // ---------------------------------------------------------------- life cycle

  async start(host: EngineHost): Promise<void> {
    this.host = host;
    const { Redis: RedisClient } = await import('ioredis');
    const where = describeUrl(this.options.url);
    const connect = (role: string): Redis =>
      new RedisClient(this.options.url, {
        lazyConnect: true,
        connectionName: `perihelion:${this.nodeId}:${role}`,
        connectTimeout: this.options.connectTimeout,
        commandTimeout: this.options.commandTimeout,
        // Fail fast while disconnected (the node serves its own sessions meanwhile) and never run a
        // command twice: a publish script resent after a reconnect could publish twice.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        autoResendUnfulfilledCommands: false,
        // At start a failure is final (a clear error beats a silent wait); later, reconnect with backoff.
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
      sub.on('message', (channel: string, message: string) => this.onMessage(channel, message));
      await sub.subscribe(this.busChannel, this.nodeChannel);
      await this.beat();
    } catch (error) {
      cmd.disconnect();
      sub.disconnect();
      this.cmd = this.sub = null;
      const reason = (error as Error).message === 'Connection is closed.' && lastError ? lastError.message : (error as Error).message;
      throw new PerihelionError('ERR_ENGINE_UNAVAILABLE', `cannot use Redis at ${where}: ${reason}`);
    }
    this.started = true;
    // After a reconnect Redis may have lost everything (a restart) or the others may have taken
    // this node for dead: register again. ioredis resubscribes the pub/sub channels by itself.
    cmd.on('ready', () => void this.recovered());
    this.heartbeat = setInterval(() => void this.beat().catch((error: unknown) => this.lost(error)), this.options.heartbeatInterval);
    this.heartbeat.unref();
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    for (const { resolve } of this.pending.values()) resolve();
    this.pending.clear();
    for (const resolve of this.fences.values()) resolve();
    const { cmd, sub } = this;
    if (cmd && this.ready(cmd)) {
      // Leaving: this node's sessions and subscriptions go with it, at once.
      await Promise.allSettled(this.sessionChains());
      try {
        while (Number(await this.script('REMOVE_NODE', [this.nodeId, -1, CLEANUP_BATCH])) > 0);
      } catch (error) {
        this.report(error);
      }
    }
    await Promise.allSettled([quit(cmd), quit(sub)]);
    this.cmd = this.sub = null;
    this.host = null;
  }

  // ---------------------------------------------------------------- sessions and subscriptions

  async addSession(clientId: string, user: string | null = null): Promise<void> {
    this.running();
    this.local(clientId).user = user;
    await this.serial(clientId, async () => {
      if (!this.readyCmd()) return;
      await this.script('REGISTER', [this.nodeId, clientId, user ?? '', 0]).catch((error: unknown) => this.degraded(error));
    });
  }

  async usersOf(clientIds: readonly string[]): Promise<(string | null)[]> {
    this.running();
    if (clientIds.length === 0) return [];
    return this.read(
      'users of sessions',
      async (cmd) => {
        // In slices: a channel's subscribers may be far more than a call can take as arguments.
        const users: (string | null)[] = [];
        for (let i = 0; i < clientIds.length; i += USERS_PER_READ) {
          users.push(...(await cmd.hmget(`${this.options.prefix}user`, ...clientIds.slice(i, i + USERS_PER_READ))));
        }
        return users;
      },
      () => clientIds.map((clientId) => this.sessions.get(clientId)?.user ?? null),
    );
  }

  async subscribe(clientId: string, pattern: string, recover: readonly RecoverRequest[] = [], maxReplay = Infinity): Promise<SubscribeOutcome> {
    const host = this.running();
    return this.serial(clientId, async (): Promise<SubscribeOutcome> => {
      const outcome: SubscribeOutcome = { position: null, recovered: [] };
      if (this.sessions.get(clientId)?.removed) return outcome;
      const retention = isWildcard(pattern) ? null : this.retention(pattern);
      // Hold the live messages of every channel whose seam must be exact (the exact channel when it
      // has positions, each channel to recover), unless they already reach this session through
      // another of its subscriptions: those keep flowing.
      const holds: Hold[] = [];
      const held = (channel: string): void => {
        if (holds.some((h) => h.channel === channel) || this.index.match(channel).has(clientId)) return;
        const hold: Hold = { clientId, channel, fenced: false, held: [] };
        let byClient = this.holds.get(channel);
        if (!byClient) this.holds.set(channel, (byClient = new Map()));
        byClient.set(clientId, hold);
        holds.push(hold);
      };
      if (retention && retention.size > 0) held(pattern);
      for (const { channel } of recover) held(channel);
      this.index.add(clientId, pattern);

      const cmd = this.readyCmd();
      if (!cmd) {
        this.degraded(new Error(`subscribed ${clientId} to ${pattern} on this node only; nothing recovered`));
        this.release(host, holds, new Map());
        return { position: null, recovered: recover.map(({ channel }) => ({ channel, recovered: false, replayed: 0 })) };
      }
      const fence = holds.length > 0 ? String(++this.seq) : '';
      const fenced = fence ? this.awaitFence(fence, holds) : Promise.resolve();
      const args: Array<string | number> = [
        clientId,
        pattern,
        this.nodeId,
        fence,
        Math.min(maxReplay, Number.MAX_SAFE_INTEGER),
        retention?.size ?? 0,
        retention?.ttl ?? 0,
        host.historySettings.maxChannels,
        newEpoch(),
      ];
      for (const { channel, since } of recover) args.push(channel, since.epoch, since.offset);
      let reply: unknown[];
      try {
        reply = (await this.script('SUBSCRIBE', args)) as unknown[];
      } catch (error) {
        this.fences.delete(fence);
        this.degraded(error);
        this.release(host, holds, new Map());
        return { position: null, recovered: recover.map(({ channel }) => ({ channel, recovered: false, replayed: 0 })) };
      }
      await fenced;

      // Where the read stopped on each channel: live messages up to there are in the replay (or
      // came before the subscribe); those after it are delivered once the replay is queued.
      const reached = new Map<string, Position>();
      const epoch = String(reply[0]);
      if (epoch !== '') {
        outcome.position = { epoch, offset: Number(reply[1]) };
        reached.set(pattern, outcome.position);
      }
      let at = 2;
      for (const { channel } of recover) {
        const ok = Number(reply[at]) === 1;
        const channelEpoch = String(reply[at + 1]);
        const offset = Number(reply[at + 2]);
        const count = Number(reply[at + 3]);
        const payloads = reply.slice(at + 4, at + 4 + count).map(String);
        at += 4 + count;
        if (channelEpoch !== '') reached.set(channel, { epoch: channelEpoch, offset });
        if (ok && payloads.length > 0) host.onReplay(clientId, channel, payloads);
        outcome.recovered.push({ channel, recovered: ok, replayed: payloads.length });
      }
      this.release(host, holds, reached);
      return outcome;
    });
  }

  async unsubscribe(clientId: string, pattern: string): Promise<void> {
    this.running();
    await this.serial(clientId, async () => {
      this.index.remove(clientId, pattern);
      if (!this.readyCmd()) return;
      await this.script('UNSUBSCRIBE', [clientId, pattern]).catch((error: unknown) => this.degraded(error));
    });
  }

  async removeSession(clientId: string): Promise<void> {
    const local = this.sessions.get(clientId);
    if (local) local.removed = true;
    this.index.removeSession(clientId);
    if (!this.cmd) return;
    await this.serial(clientId, async () => {
      this.sessions.delete(clientId);
      if (!this.readyCmd()) return;
      await this.script('REMOVE_SESSION', [clientId, this.nodeId]).catch((error: unknown) => this.degraded(error));
    });
  }

  // ---------------------------------------------------------------- publishing

  async publish(publication: Publication): Promise<void> {
    const host = this.running();
    const cmd = this.readyCmd();
    if (!cmd) {
      // Redis is away: this node's sessions still get the message, without a position.
      this.degraded(new Error(`published on ${publication.channel} to this node's sessions only, without a position`));
      host.onPublication(publication, this.index.match(publication.channel));
      return;
    }
    const tag = String(++this.seq);
    const header = JSON.stringify(['b', this.nodeId, tag, publication.channel]).slice(0, -1);
    const echoed = new Promise<void>((resolve) => this.pending.set(tag, { publication, resolve }));
    let epoch: string | null = null;
    let offset = 0;
    let before = '';
    let after = '';
    try {
      const retention = this.retention(publication.channel);
      if (retention.size > 0) {
        const text = addToExt({ text: publication.payload, ext: publication.ext }, publication.message, 'position', this.placeholder);
        const cut = text.lastIndexOf(this.placeholderJson);
        before = text.slice(0, cut);
        after = text.slice(cut + this.placeholderJson.length);
        const { maxChannels } = host.historySettings;
        const args = [publication.channel, retention.size, retention.ttl, maxChannels, newEpoch(), header, before, after];
        [epoch, offset] = (await this.script('PUBLISH', args)) as [string, number];
      } else {
        await cmd.publish(this.busChannel, `${header}]\n${publication.payload}`);
      }
    } catch (error) {
      this.pending.delete(tag);
      throw unavailable(`publish on ${publication.channel} failed`, error);
    }
    const waiting = this.pending.get(tag);
    if (waiting && this.sub?.status !== 'ready') {
      // Published, but this node cannot hear the cluster channel now: its own sessions get it at once.
      const payload = epoch === null ? publication.payload : `${before}${JSON.stringify({ epoch, offset: Number(offset) })}${after}`;
      const position = epoch === null ? [] : [epoch, Number(offset)];
      this.onBroadcast(host, ['b', this.nodeId, tag, publication.channel, ...position], payload);
      return;
    }
    // Resolve once this node has delivered it too (as the memory engine does), or give up waiting.
    const timer = setTimeout(() => {
      const waiting = this.pending.get(tag);
      if (!waiting) return;
      this.pending.delete(tag);
      this.report(unavailable(`a publish on ${publication.channel} did not come back through Redis within ${this.options.commandTimeout} ms; this node's sessions may miss it`));
      waiting.resolve();
    }, this.options.commandTimeout);
    await echoed;
    clearTimeout(timer);
  }

  async sessionsOfUser(user: string): Promise<string[]> {
    this.running();
    return this.read(
      `sessions of user ${user}`,
      (cmd) => cmd.smembers(`${this.options.prefix}usess:${user}`),
      () => [...this.sessions].filter(([, local]) => !local.removed && local.user === user).map(([clientId]) => clientId),
    );
  }

  async endSession(clientId: string): Promise<boolean> {
    const host = this.running();
    const local = this.sessions.get(clientId);
    if (local && !local.removed) {
      host.onEndSession(clientId);
      return true;
    }
    return this.toOwner(clientId, `${JSON.stringify(['x', clientId])}\n`, 'end');
  }

  async sendTo(clientId: string, publication: Publication): Promise<boolean> {
    const host = this.running();
    const local = this.sessions.get(clientId);
    if (local && !local.removed) {
      host.onDirect(publication, clientId);
      return true;
    }
    return this.toOwner(clientId, `${JSON.stringify(['d', clientId])}\n${publication.payload}`, 'reach');
  }

  /**
   * Sends a message to the node that holds a session; false when no node holds it. Without Redis
   * the owner cannot be known: that is an outage (ERR_ENGINE_UNAVAILABLE), not an unknown session.
   */
  private async toOwner(clientId: string, message: string, what: string): Promise<boolean> {
    const cmd = this.readyCmd();
    if (!cmd) throw unavailable(`cannot ${what} the node of session ${clientId}: Redis is away`);
    try {
      const node = await cmd.hget(`${this.options.prefix}owner`, clientId);
      if (node === null) return false;
      const receivers = await cmd.publish(`${this.options.prefix}node:${node}`, message);
      return receivers > 0;
    } catch (error) {
      throw unavailable(`cannot ${what} the node of session ${clientId}`, error);
    }
  }

  // ---------------------------------------------------------------- reading shared state

  async history(channel: string, query: HistoryQuery = {}): Promise<HistoryPage | null> {
    const host = this.running();
    if (!this.readyCmd()) throw unavailable(`cannot read the history of ${channel}`);
    const { since, limit } = query;
    const reply = (await this.script('HISTORY', [channel, since ? 1 : 0, since?.epoch ?? '', since?.offset ?? 0, limit ?? -1]).catch((error: unknown) => {
      throw unavailable(`cannot read the history of ${channel}`, error);
    })) as unknown[];
    if (Number(reply[0]) === 0) {
      if (host.historySettings.retentionFor(channel).size === 0) return null;
      return { position: null, payloads: [], complete: since === undefined };
    }
    const complete = Number(reply[3]) === 1;
    return { position: { epoch: String(reply[1]), offset: Number(reply[2]) }, payloads: complete ? reply.slice(4).map(String) : [], complete };
  }

  async historyStats(): Promise<{ channels: number; messages: number }> {
    this.running();
    const [channels, messages] = (await this.read('history stats', () => this.script('STATS', []))) as [number, number];
    return { channels: Number(channels), messages: Number(messages) };
  }

  async subscribers(pattern: string): Promise<string[]> {
    this.running();
    return this.read(`subscribers of ${pattern}`, (cmd) => cmd.smembers(`${this.options.prefix}subs:${pattern}`), () => this.index.subscribersOf(pattern));
  }

  async subscriberCount(pattern: string): Promise<number> {
    this.running();
    return this.read(`subscribers of ${pattern}`, (cmd) => cmd.scard(`${this.options.prefix}subs:${pattern}`), () => this.index.count(pattern));
  }

  async channels(): Promise<Map<string, number>> {
    this.running();
    const counts: Record<string, string | number> = await this.read<Record<string, string | number>>(
      'channels',
      (cmd) => cmd.hgetall(`${this.options.prefix}counts`),
      () => Object.fromEntries(this.index.patterns()),
    );
    return new Map(Object.entries(counts).map(([pattern, count]) => [pattern, Number(count)]));
  }

  /** Ids of the nodes that are alive now (heartbeat within `nodeTimeout`), this one included. */
  async nodes(): Promise<string[]> {
    const cmd = this.readyCmd();
    if (!cmd) throw unavailable('cannot list the nodes');
    const [seconds, micros] = await cmd.time();
    const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    const all = await cmd.hgetall(`${this.options.prefix}nodes`);
    return Object.entries(all)
      .filter(([, seen]) => now - Number(seen) <= this.options.nodeTimeout)
      .map(([node]) => node);
  }

  // ---------------------------------------------------------------- messages from Redis

  private onMessage(channel: string, message: string): void {
    const host = this.host;
    if (!host) return;
    const newline = message.indexOf('\n');
    let header: unknown[];
    try {
      header = JSON.parse(message.slice(0, newline)) as unknown[];
    } catch (error) {
      this.report(new Error(`unreadable message on Redis channel ${channel}: ${String(error)}`));
      return;
    }
    const payload = message.slice(newline + 1);
    switch (header[0]) {
      case 'b':
        return this.onBroadcast(host, header, payload);
      case 'd': {
        const clientId = String(header[1]);
        const local = this.sessions.get(clientId);
        if (local && !local.removed) host.onDirect(remotePublication(null, payload), clientId);
        return;
      }
      case 'f':
        this.fences.get(String(header[1]))?.();
        return;
      case 'x': {
        const clientId = String(header[1]);
        const local = this.sessions.get(clientId);
        if (local && !local.removed) host.onEndSession(clientId);
        return;
      }
      default:
        this.report(new Error(`unknown message kind ${JSON.stringify(header[0])} on Redis channel ${channel}`));
    }
  }

  private onBroadcast(host: EngineHost, header: unknown[], payload: string): void {
    const [, origin, tag, channel, epoch, offset] = header as [string, string, string, string, string?, number?];
    const position = epoch !== undefined && offset !== undefined ? { epoch, offset } : undefined;
    const mine = origin === this.nodeId ? this.pending.get(tag) : undefined;
    let publication: Publication;
    if (mine) {
      this.pending.delete(tag);
      publication = mine.publication;
      publication.payload = payload;
      if (position) {
        publication.position = position;
        const { message } = publication;
        message.ext = publication.ext === 'object' ? { ...message.ext, position } : { position };
      }
    } else {
      publication = remotePublication(channel, payload, position);
    }
    let clientIds: Iterable<string> = this.index.match(channel);
    const holds = this.holds.get(channel);
    if (holds) {
      const free = new Set<string>();
      for (const id of clientIds) {
        const hold = holds.get(id);
        if (hold) hold.held.push(publication);
        else free.add(id);
      }
      clientIds = free;
    }
    host.onPublication(publication, clientIds);
    mine?.resolve();
  }

  /** Resolves when the fence comes back (or after commandTimeout, reported). */
  private awaitFence(fence: string, holds: Hold[]): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (!this.fences.delete(fence)) return;
        this.report(unavailable(`a subscribe's fence did not come back through Redis within ${this.options.commandTimeout} ms`));
        resolve();
      }, this.options.commandTimeout);
      this.fences.set(fence, () => {
        this.fences.delete(fence);
        clearTimeout(timer);
        for (const hold of holds) hold.fenced = true;
        resolve();
      });
    });
  }

  /** Ends holds: their messages past the position the read reached are delivered, in order. */
  private release(host: EngineHost, holds: readonly Hold[], reached: ReadonlyMap<string, Position>): void {
    for (const hold of holds) {
      const byClient = this.holds.get(hold.channel);
      byClient?.delete(hold.clientId);
      if (byClient?.size === 0) this.holds.delete(hold.channel);
      const floor = reached.get(hold.channel);
      for (const publication of hold.held) {
        const at = publication.position;
        if (at && floor && at.epoch === floor.epoch && at.offset <= floor.offset) continue;
        host.onDirect(publication, hold.clientId);
      }
    }
  }

  // ---------------------------------------------------------------- liveness

  /** Heartbeat: says this node is alive, re-registers it if it was forgotten, removes dead nodes. */
  private async beat(): Promise<void> {
    const cmd = this.readyCmd();
    if (!cmd) return;
    const [fresh, ...dead] = (await this.script('HEARTBEAT', [this.nodeId, this.options.nodeTimeout])) as [number, ...string[]];
    if (Number(fresh) === 1 && this.started) await this.register();
    for (const node of dead) {
      while (Number(await this.script('REMOVE_NODE', [node, this.options.nodeTimeout, CLEANUP_BATCH])) > 0);
    }
  }

  /** Records every session and subscription of this node in Redis again. */
  private async register(): Promise<void> {
    const args: Array<string | number> = [this.nodeId];
    const flush = async (): Promise<void> => {
      if (args.length > 1) await this.script('REGISTER', [this.nodeId, ...args.splice(1)]);
    };
    for (const [clientId, local] of this.sessions) {
      if (local.removed) continue;
      const patterns = [...this.index.subscriptionsOf(clientId)];
      args.push(clientId, local.user ?? '', patterns.length, ...patterns);
      if (args.length > 2000) await flush();
    }
    await flush();
  }

  /** The command connection is back. */
  private async recovered(): Promise<void> {
    if (!this.started || this.closing) return;
    this.outage = false;
    try {
      // Whatever Redis still holds about this node may be stale (sessions ended while away).
      while (Number(await this.script('REMOVE_NODE', [this.nodeId, -1, CLEANUP_BATCH])) > 0);
      // The heartbeat finds this node unregistered and registers its sessions again.
      await this.beat();
    } catch (error) {
      this.lost(error);
    }
  }

  /** Redis is unreachable: reported once per outage. */
  private lost(error: unknown): void {
    if (this.outage || this.closing) return;
    this.outage = true;
    this.report(unavailable('lost the connection to Redis; serving this node\'s sessions only until it is back', error));
  }

  /** A Redis-side change that could not be made; the node carries on with its local state. */
  private degraded(error: unknown): void {
    if (this.outage) return;
    this.report(unavailable('Redis is unreachable; serving this node\'s sessions only', error));
  }

  // ---------------------------------------------------------------- helpers

  private report(error: unknown): void {
    this.host?.reportError(error);
  }

  private running(): EngineHost {
    if (!this.host || this.closing || !this.cmd) throw new PerihelionError('ERR_ENGINE_CLOSED', 'the Redis engine is not started or already closed');
    return this.host;
  }

  private ready(client: Redis): boolean {
    return client.status === 'ready';
  }

  private readyCmd(): Redis | null {
    return this.cmd && this.ready(this.cmd) ? this.cmd : null;
  }

  private local(clientId: string): LocalSession {
    let local = this.sessions.get(clientId);
    if (!local || local.removed) this.sessions.set(clientId, (local = { chain: Promise.resolve(), removed: false, user: null }));
    return local;
  }

  /** Runs `task` after every earlier change of the same session. */
  private serial<T>(clientId: string, task: () => Promise<T>): Promise<T> {
    const local = this.sessions.get(clientId) ?? this.local(clientId);
    const run = local.chain.then(task);
    local.chain = run.catch(() => {});
    return run;
  }

  private sessionChains(): Array<Promise<unknown>> {
    return [...this.sessions.values()].map((local) => local.chain);
  }

  private retention(channel: string): Retention {
    return this.running().historySettings.retentionFor(channel);
  }

  private async script(name: ScriptName, args: Array<string | number>): Promise<unknown> {
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
  private async read<T>(what: string, query: (cmd: Redis) => Promise<T>, fallback?: () => T): Promise<T> {
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
}

/** A publication that came from another node: the message object is parsed only if someone asks for it. */
function remotePublication(channel: string | null, payload: string, position?: Position): Publication {
  let message: Message | undefined;
  const publication = {
    channel: channel ?? '',
    payload,
    ext: position ? 'object' : 'other',
    get message(): Message {
      message ??= JSON.parse(payload) as Message;
      return message;
    },
  } as Publication;
  if (position) publication.position = position;
  if (channel === null) publication.channel = publication.message.channel;
  return publication;
}

function validateRedisUrl(url: unknown): void {
  const example = 'redis://127.0.0.1:6379 (or rediss:// for TLS, redis://:password@host:6379/0 with a password and database)';
  if (typeof url !== 'string') invalid(`the Redis URL must be a string like ${example}`);
  let parsed: URL;
  try {
    parsed = new URL(url as string);
  } catch {
    return invalid(`the Redis URL ${JSON.stringify(url)} is not a URL; expected ${example}`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    invalid(`the Redis URL ${JSON.stringify(describeUrl(url as string))} must start with redis:// or rediss://; expected ${example}`);
  }
  if (parsed.hostname === '') invalid(`the Redis URL ${JSON.stringify(url)} names no host; expected ${example}`);
  const db = parsed.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) invalid(`the Redis URL's database must be a number (like /0), got ${JSON.stringify(parsed.pathname)}`);
}

/** The URL without its password, for messages. */
function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return url;
  }
}

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

function unavailable(what: string, cause?: unknown): PerihelionError {
  const error = new PerihelionError('ERR_ENGINE_UNAVAILABLE', cause ? `${what}: ${(cause as Error).message ?? String(cause)}` : what);
  if (cause !== undefined) (error as Error & { cause?: unknown }).cause = cause;
  return error;
}

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<T>;
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

/** 48 random bits in base 36, as the memory engine's epochs. */
function newEpoch(): string {
  return randomBytes(6).readUIntBE(0, 6).toString(36);
}
