/**
 * The Redis engine: several Perihelion processes act as one server.
 *
 * Each publish crosses Redis once. A Lua script gives the message its position (the channel's
 * epoch and the next offset), appends the final bytes to the channel's history (a stream) and
 * publishes them on the bus of the channel's partition, all in one atomic step; every node, the
 * publishing one included, delivers from its subscription to that bus, so every node sees one
 * order per channel. A node fans out to its own sessions with its local subscription index: Redis
 * carries one message per publish, never one per subscriber. On a Redis Cluster the partitions
 * spread over the shards, so publishes scale with them (redis-layout.ts).
 *
 * What is shared through Redis: positions and history, who is subscribed to what (for presence,
 * `subscribers`, `channels`), which node holds which session (for `sendTo`), and which nodes are
 * alive (heartbeats; a node silent for `nodeTimeout` has its sessions removed by the others).
 * What stays on each node: the sessions themselves, their queues and connections.
 *
 * When Redis cannot be reached the node keeps serving its own sessions: publishes reach this
 * node's subscribers without a position, subscriptions are kept locally, and the failure is
 * reported through the server's 'error' event. When Redis is back the node registers its
 * sessions and subscriptions again.
 *
 * This file holds the engine's calls and what it keeps of this node's sessions; the rest is one
 * concern a file: redis-options.ts (options and their checks), redis-connection.ts (the two
 * connections, scripts, outages), redis-layout.ts (which slot and prefix each key and channel
 * has), redis-scripts.ts (key schema and Lua scripts), redis-bus.ts (what nodes send each other),
 * redis-liveness.ts (heartbeats and dead nodes), redis-seam.ts (the exact seam of a recovery).
 */
import { randomBytes } from 'node:crypto';
import { isWildcard, type Message, type Position } from '@perihelion/protocol';
import { isIdempotencyKeyed, type Engine, type EngineHost, type Publication, type RecoverRequest, type SessionInfo, type SubscribeOutcome } from './engine.js';
import type { HistoryPage, HistoryQuery, Retention } from './history.js';
import { newEpoch, stampPosition, withPosition } from './position.js';
import { LeavingMarks, markKey, markToken } from './leaving-marks.js';
import { BusFormatError, broadcastHeader, decode, encode, type Broadcast, type BusMessage } from './redis-bus.js';
import { RedisConnection, unavailable } from './redis-connection.js';
import { RedisLayout } from './redis-layout.js';
import { NodeLiveness, type Registration } from './redis-liveness.js';
import { describeUrl, resolveRedisOptions, type RedisEngineOptions } from './redis-options.js';
import { Census } from './redis-census.js';
import { NodeMail } from './redis-node-mail.js';
import { RecoverySeam, type Hold } from './redis-seam.js';
import { CatchUp } from './redis-catch-up.js';
import { SubscriptionIndex } from './subscription-index.js';
import { PerihelionError } from '../errors.js';

export { REDIS_DEFAULTS, type RedisEngineOptions } from './redis-options.js';

/** Session users read by one HMGET (presence of a channel may name hundreds of thousands). */
const USERS_PER_READ = 1000;

/** A session of this node: its Redis-side changes run one after another, in call order. */
interface LocalSession {
  chain: Promise<unknown>;
  removed: boolean;
  /** Its authenticated user, for presence on every node (null: anonymous). */
  user: string | null;
}

/** What a subscribe read in one partition (see readForSubscribe). */
interface PartitionRead {
  /** The position of the channel subscribed to, when it was read here. */
  position: Position | null;
  recovered: Recovered[];
}

/** One channel's recovery: whether it is exact, where the read reached, what it replays. */
interface Recovered {
  channel: string;
  recovered: boolean;
  reached: Position | null;
  payloads: string[];
}

/** A publish of this node on its way through Redis, until it comes back on the bus. */
interface PendingPublish {
  publication: Publication;
  resolve: () => void;
  /** Once Redis has published it: the message as the bus carries it, for when its echo cannot come. */
  published?: () => Broadcast;
}

/**
 * Reads of what a node missed while it did not hear the bus, in all, before it gives up (see
 * catchUpAfterDeafness): 250 ms apart, doubling up to CATCH_UP_MAX_WAIT_MS, about 30 s in all, as
 * long as a Redis failover takes (a Sentinel's), which fails reads too.
 */
const CATCH_UP_TRIES = 10;
/** The longest wait between two reads of a catch-up, ms. */
const CATCH_UP_MAX_WAIT_MS = 4000;
/** Channels per read of a catch-up (each read one script call, its answer all they missed). */
const CATCH_UP_BATCH = 500;

/** A publish of this node's already delivered to its own sessions: its echo on the bus is dropped. */
const DELIVERED_HERE: PendingPublish = { publication: null as never, resolve: () => {} };

export class RedisEngine implements Engine {
  readonly name = 'redis';
  /** This process's id in the cluster. */
  readonly nodeId = randomBytes(8).toString('hex');
  readonly options: Required<RedisEngineOptions>;
  private host: EngineHost | null = null;
  private readonly connection: RedisConnection;
  private readonly liveness: NodeLiveness;
  private readonly seam: RecoverySeam;
  /** What the node's sessions missed while it heard nothing of the bus (redis-catch-up.ts). */
  private readonly catchUp = new CatchUp();
  /** The catch-ups, one after the other: each starts where the one before ended. */
  private catchingUp: Promise<void> = Promise.resolve();
  private readonly sessionCensus: Census;
  /** What this node's own channel carries, large messages by way of a key (redis-node-mail.ts). */
  private readonly mail: NodeMail;
  private readonly ownChannel: string;
  private readonly index = new SubscriptionIndex();
  private readonly sessions = new Map<string, LocalSession>();
  private readonly pending = new Map<string, PendingPublish>();
  /** Presence grace marks set while Redis was away (see markLeaving). */
  private readonly leaving = new LeavingMarks();
  /** The state channels this node holds (claimed again when Redis forgot them). */
  private readonly stateClaims = new Set<string>();
  /** Where each key and pub/sub channel is. */
  private readonly layout: RedisLayout;
  /** Marks where the position goes in a payload sent to the publish script (random: no payload can forge it). */
  private readonly placeholder = `\u0000position-${randomBytes(8).toString('hex')}\u0000`;
  private readonly placeholderJson = JSON.stringify(this.placeholder);
  private lastTag = 0;
  private closing = false;

  constructor(options: RedisEngineOptions = {}) {
    this.options = resolveRedisOptions(options);
    this.layout = new RedisLayout(this.options.prefix, this.options.cluster, this.options.partitions);
    this.connection = new RedisConnection(this.options, `perihelion:${this.nodeId}`, {
      onMessage: (channel, text) => this.onMessage(channel, text),
      onReconnect: () => void Promise.all([this.liveness.rejoin(), this.agreeOnKey()]).catch((error: unknown) => this.connection.lost(error)),
      deaf: () => this.echoesLost(),
      hearingAgain: () => this.catchUpLater(0),
      report: (error) => this.report(error),
      restored: (message) => this.host?.reportRestored(message),
      // What this node does while Redis is away is not written there: all of it again once it answers.
      outage: () => this.liveness.resync(),
    });
    this.liveness = new NodeLiveness(this.connection, this.layout.control, this.nodeId, this.options, () => this.registrations(), (sessions) => this.host?.onSessionsLost(sessions), () => this.host?.onSessionsRestored(), () => this.stateClaims, (channel, holder) => {
      this.stateClaims.delete(channel);
      this.host?.onStateLost?.(channel, holder);
    });
    this.ownChannel = this.layout.node(this.nodeId);
    this.mail = new NodeMail({
      connection: this.connection,
      layout: this.layout,
      nodeId: this.nodeId,
      inlineBytes: this.options.nodeMessageInlineBytes,
      keepMs: this.options.nodeTimeout,
      read: (message) => this.read(message),
      report: (error) => this.report(error),
    });
    this.seam = new RecoverySeam(this.nodeId, this.options.commandTimeout, (error) => this.report(error));
    this.sessionCensus = new Census({
      nodeId: this.nodeId,
      nodes: () => this.liveness.nodes(),
      ask: async (request) => void (await this.sendOnBus(this.layout.controlBus, encode({ kind: 'census', origin: this.nodeId, request }))),
      answer: async (origin, request, payload) => {
        const cmd = this.connection.readyCmd();
        if (cmd) await this.mail.send(cmd, origin, encode({ kind: 'answer', request, node: this.nodeId, payload }));
      },
      timeout: this.options.commandTimeout,
      report: (error) => this.report(error),
    });
  }

  /** Where this engine's Redis is, without the password (for logs and start-up summaries). */
  get where(): string {
    return describeUrl(this.options.url);
  }

  away(): string | null {
    return this.connection.away();
  }

  // ---------------------------------------------------------------- life cycle

  /** The cluster's browser key, once started (see Engine.browserKey). */
  private key = '';

  browserKey(): string {
    return this.key;
  }

  /**
   * Takes the cluster's key, or sets this node's: at start, and again after a reconnect (a Redis
   * that lost its data then gets back the key the nodes already use, not a new node's).
   */
  private async agreeOnKey(): Promise<void> {
    this.key = String(await this.connection.script('BROWSER_KEY', this.layout.control, [this.key || randomBytes(32).toString('hex')]));
  }

  async start(host: EngineHost): Promise<void> {
    this.host = host;
    await this.connection.open(this.layout.channelsFor(this.nodeId), async () => {
      const differ = (theirs: number): Error =>
        new Error(`the live nodes of this cluster (prefix ${JSON.stringify(this.options.prefix)}) use ${theirs} partitions and this node ${this.options.partitions}: every node must use the same number`);
      // On one Redis, one partition keeps its control keys untagged and more tag them: nodes that
      // count differently would not even see each other there, so the other place is asked too.
      const elsewhere = this.layout.otherControl();
      if (elsewhere !== null) {
        const theirs = Number(await this.connection.script('LIVE_LAYOUT', elsewhere, [this.options.nodeTimeout]));
        if (theirs !== 0) throw differ(theirs);
      }
      const agreed = Number(await this.connection.script('LAYOUT', this.layout.control, [this.options.partitions, this.options.nodeTimeout]));
      if (agreed !== this.options.partitions) throw differ(agreed);
      await this.agreeOnKey();
      await this.liveness.beat();
    });
    this.liveness.start();
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.liveness.stop();
    for (const { resolve } of this.pending.values()) resolve();
    this.pending.clear();
    this.seam.close();
    await this.connection.close(async () => {
      // Leaving: this node's sessions and subscriptions go with it, at once.
      await Promise.allSettled([...this.sessions.values()].map((local) => local.chain));
      await this.liveness.leave();
    });
    this.host = null;
  }

  /** Ids of the nodes that are alive now (heartbeat within `nodeTimeout`), this one included. */
  nodes(): Promise<string[]> {
    return this.liveness.nodes();
  }

  // ---------------------------------------------------------------- sessions and subscriptions

  async addSession(clientId: string, user: string | null = null): Promise<void> {
    this.running();
    this.local(clientId).user = user;
    await this.serial(clientId, async () => {
      if (!this.connection.readyCmd()) return;
      await this.connection.script('REGISTER', this.layout.control, [this.nodeId, clientId, user ?? '', 0]).catch((error: unknown) => this.notWritten(error));
    });
  }

  async subscribe(clientId: string, pattern: string, recover: readonly RecoverRequest[] = [], maxReplay = Infinity): Promise<SubscribeOutcome> {
    const host = this.running();
    return this.serial(clientId, async (): Promise<SubscribeOutcome> => {
      if (this.sessions.get(clientId)?.removed) return { position: null, recovered: [] };
      const retention = isWildcard(pattern) ? null : this.retention(pattern);
      // Hold the live messages of every channel whose seam must be exact (the exact channel when it
      // has positions, each channel to recover), unless they already reach this session through
      // another of its subscriptions: those keep flowing.
      const exact = [...(retention && retention.size > 0 ? [pattern] : []), ...recover.map(({ channel }) => channel)];
      const holds = this.seam.hold(clientId, exact.filter((channel) => !this.index.match(channel).has(clientId)));
      this.index.add(clientId, pattern);

      if (!this.connection.readyCmd()) {
        this.connection.degraded(new Error(`subscribed ${clientId} to ${pattern} on this node only; nothing recovered`));
        return this.subscribedHereOnly(host, holds, recover);
      }
      const registered = this.connection.script('SUBSCRIBE', this.layout.control, [clientId, pattern, this.nodeId]);
      registered.catch(() => {}); // awaited below, after the reads
      const fences: string[] = [];
      let read: PartitionRead[];
      try {
        read = await this.readForSubscribe(host, holds, retention && retention.size > 0 ? pattern : null, retention, recover, maxReplay, fences);
        await registered;
      } catch (error) {
        for (const id of fences) this.seam.forget(id);
        this.notWritten(error);
        return this.subscribedHereOnly(host, holds, recover);
      }

      // Where the read stopped on each channel: live messages up to there are in the replay (or
      // came before the subscribe); those after it are delivered once the replay is queued.
      const outcome: SubscribeOutcome = { position: null, recovered: [] };
      const reached = new Map<string, Position>();
      const byChannel = new Map<string, Recovered>();
      for (const part of read) {
        if (part.position) {
          outcome.position = part.position;
          reached.set(pattern, part.position);
        }
        for (const one of part.recovered) {
          byChannel.set(one.channel, one);
          if (one.reached) reached.set(one.channel, one.reached);
        }
      }
      for (const { channel } of recover) {
        const one = byChannel.get(channel)!;
        if (one.recovered && one.payloads.length > 0) host.onReplay(clientId, channel, one.payloads);
        outcome.recovered.push({ channel, recovered: one.recovered, replayed: one.payloads.length });
      }
      this.seam.release(host, holds, reached);
      return outcome;
    });
  }

  /**
   * A subscribe's reads, one READ script per partition involved (one, mostly): the position of
   * `positioned`, the messages missed on each channel to recover, within `maxReplay` in all, and
   * the fence of each partition's holds, waited for. Fence ids go into `fences` as they are sent.
   */
  private async readForSubscribe(
    host: EngineHost,
    holds: readonly Hold[],
    positioned: string | null,
    retention: Retention | null,
    recover: readonly RecoverRequest[],
    maxReplay: number,
    fences: string[],
  ): Promise<PartitionRead[]> {
    const byPartition = new Map<number, { positioned: string | null; recover: RecoverRequest[] }>();
    const partition = (channel: string): { positioned: string | null; recover: RecoverRequest[] } => {
      const k = this.layout.partitionOf(channel);
      let part = byPartition.get(k);
      if (!part) byPartition.set(k, (part = { positioned: null, recover: [] }));
      return part;
    };
    if (positioned !== null) partition(positioned).positioned = positioned;
    for (const one of recover) partition(one.channel).recover.push(one);

    let budget = Math.min(maxReplay, Number.MAX_SAFE_INTEGER);
    const parts: PartitionRead[] = [];
    for (const [k, part] of byPartition) {
      const fence = this.seam.fence(holds.some((hold) => this.layout.partitionOf(hold.channel) === k));
      const args: Array<string | number> = [
        this.layout.publishCommand,
        fence.id === '' ? '' : encode({ kind: 'fence', fence: fence.id }),
        part.positioned ?? '',
        retention?.size ?? 0,
        retention?.ttl ?? 0,
        this.maxChannelsPerPartition(host),
        newEpoch(),
        budget,
      ];
      for (const { channel, since } of part.recover) args.push(channel, since.epoch, since.offset);
      if (fence.id !== '') fences.push(fence.id);
      const subscription = this.connection.subscription;
      const reply = (await this.connection.script('READ', this.layout.data(k), args)) as unknown[];
      if (fence.id !== '') await this.fenceBack(fence, k, subscription);

      const epoch = String(reply[0]);
      const read: PartitionRead = { position: epoch === '' ? null : { epoch, offset: Number(reply[1]) }, recovered: [] };
      let at = 2;
      for (const { channel } of part.recover) {
        const channelEpoch = String(reply[at + 1]);
        const count = Number(reply[at + 3]);
        read.recovered.push({
          channel,
          recovered: Number(reply[at]) === 1,
          reached: channelEpoch === '' ? null : { epoch: channelEpoch, offset: Number(reply[at + 2]) },
          payloads: reply.slice(at + 4, at + 4 + count).map(String),
        });
        budget -= count;
        at += 4 + count;
      }
      parts.push(read);
    }
    return parts;
  }

  /**
   * Waits for a read's fence. As a publish's echo, it comes back only if the subscription in
   * place when the read was sent (`subscription`) still is when Redis has answered; if this node
   * subscribed again meanwhile, the read may have run before the renewed SUBSCRIBE, so the fence
   * is sent again now (whatever was published before it, and heard, arrives before it); if it
   * hears nothing now, nothing is on its way to wait for.
   */
  private async fenceBack(fence: { id: string; back: Promise<void> }, partition: number, subscription: number): Promise<void> {
    const now = this.connection.subscription;
    if (now === 0) return this.seam.forget(fence.id);
    if (now !== subscription) await this.sendOnBus(this.layout.bus(partition), encode({ kind: 'fence', fence: fence.id }));
    await fence.back;
  }

  /** Each partition's share of `maxHistoryChannels`. */
  private maxChannelsPerPartition(host: EngineHost): number {
    return Math.ceil(host.historySettings.maxChannels / this.layout.partitions);
  }

  /**
   * A change of this node's sessions that Redis may not have taken (a command that failed or timed
   * out: a hung Redis runs it later, or not at all). Reported; and since the connection may never
   * drop (nothing would make this node register again), the next heartbeat records this node's
   * sessions afresh, so that no session that ended stays listed (presence, counts, deliveries).
   */
  private notWritten(error: unknown): void {
    this.connection.degraded(error);
    this.liveness.resync();
  }

  /** A subscribe that Redis did not take: kept on this node, its holds ended, nothing recovered (for now). */
  private subscribedHereOnly(host: EngineHost, holds: readonly Hold[], recover: readonly RecoverRequest[]): SubscribeOutcome {
    this.seam.release(host, holds, new Map());
    const outcome: SubscribeOutcome = { position: null, recovered: recover.map(({ channel }) => ({ channel, recovered: false, replayed: 0 })) };
    if (recover.length > 0) outcome.unavailable = true;
    return outcome;
  }

  async unsubscribe(clientId: string, pattern: string): Promise<void> {
    this.running();
    await this.serial(clientId, async () => {
      this.index.remove(clientId, pattern);
      this.forgetHeard([pattern]);
      if (!this.connection.readyCmd()) return;
      await this.connection.script('UNSUBSCRIBE', this.layout.control, [clientId, pattern]).catch((error: unknown) => this.notWritten(error));
    });
  }

  async removeSession(clientId: string): Promise<void> {
    const local = this.sessions.get(clientId);
    if (local) local.removed = true;
    this.forgetHeard(this.index.removeSession(clientId));
    if (!this.connection.opened) return;
    await this.serial(clientId, async () => {
      this.sessions.delete(clientId);
      if (!this.connection.readyCmd()) return;
      await this.connection.script('REMOVE_SESSION', this.layout.control, [clientId, this.nodeId]).catch((error: unknown) => this.notWritten(error));
    });
  }

  // ---------------------------------------------------------------- publishing

  async publish(publication: Publication): Promise<boolean> {
    const host = this.running();
    const cmd = this.connection.readyCmd();
    const { channel } = publication;
    if (!cmd) {
      // An idempotency key is checked where the keys are: published here alone, a retry once
      // Redis is back would be published again.
      if (isIdempotencyKeyed(publication.once)) throw unavailable(`a publish with an idempotency key needs Redis, which holds the keys; retry once it answers`);
      // Redis is away: this node's sessions still get the message, without a position.
      this.connection.degraded(new Error(`published on ${channel} to this node's sessions only, without a position`));
      host.onPublication(publication, this.index.match(channel));
      return true;
    }
    const tag = String(++this.lastTag);
    const partition = this.layout.partitionOf(channel);
    // The echo comes back by the subscription in place when Redis publishes, if that is still the
    // one in place when Redis has answered: then Redis published it while this node heard the bus.
    const subscription = this.connection.subscription;
    const echoed = new Promise<void>((resolve) => this.pending.set(tag, { publication, resolve }));
    let position: Position | null = null;
    let around: [before: string, after: string] | null = null;
    try {
      const retention = this.retention(channel);
      if (retention.size > 0) {
        // The script writes the position into the header and the payload alike.
        around = this.aroundPosition(publication);
        const header = broadcastHeader(this.nodeId, tag, channel, publication.exclude);
        const args = [channel, retention.size, retention.ttl, this.maxChannelsPerPartition(host), newEpoch(), this.layout.publishCommand, ...header, ...around, retention.yields ? '1' : '0', ...onceArgs(publication)];
        const given = (await this.connection.script('PUBLISH', this.layout.data(partition), args)) as [string, number] | null;
        if (!given) return this.resent(tag);
        position = { epoch: String(given[0]), offset: Number(given[1]) };
      } else {
        const broadcast: Broadcast = { kind: 'broadcast', origin: this.nodeId, tag, channel, position: null, payload: publication.payload };
        if (publication.exclude !== undefined) broadcast.exclude = publication.exclude;
        if (publication.once) {
          const sent = await this.connection.script('SEND_ONCE', this.layout.data(partition), [this.layout.publishCommand, encode(broadcast), ...onceArgs(publication)]);
          if (Number(sent) === 0) return this.resent(tag);
        } else await this.connection.send(cmd, this.layout.bus(partition), encode(broadcast));
      }
    } catch (error) {
      this.connection.failed(error);
      // Its echo came back already: Redis published it, only the answer was lost (the command
      // connection dropped after). Said to have failed, it would be retried and delivered twice.
      if (!this.pending.delete(tag)) return true;
      throw unavailable(`publish on ${channel} failed`, error);
    }
    const waiting = this.pending.get(tag);
    if (waiting) {
      // Built only if the echo cannot come (the payload with its position is the size of the message).
      const published = (): Broadcast => {
        const payload = position && around ? `${around[0]}${JSON.stringify(position)}${around[1]}` : publication.payload;
        return { kind: 'broadcast', origin: this.nodeId, tag, channel, position, payload };
      };
      if (subscription === 0 || this.connection.subscription !== subscription) {
        // Published, but perhaps while this node did not hear the bus (it does not, or subscribed
        // again meanwhile, and the renewed SUBSCRIBE may have reached Redis after the publish): its
        // own sessions get it at once. Should its echo come all the same, it is dropped.
        this.deliverHere(host, published());
        return true;
      }
      waiting.published = published;
    }
    // Resolve once this node has delivered it too (as the memory engine does), or give up waiting.
    const timer = setTimeout(() => {
      const late = this.pending.get(tag);
      if (!late || late === DELIVERED_HERE) return;
      this.pending.delete(tag);
      this.report(unavailable(`a publish on ${channel} did not come back through Redis within ${this.options.commandTimeout} ms; this node's sessions may miss it`));
      late.resolve();
    }, this.options.commandTimeout);
    await echoed;
    clearTimeout(timer);
    return true;
  }

  /** Delivers a publish of this node's to its own sessions without its echo, which is dropped if it comes. */
  private deliverHere(host: EngineHost, published: Broadcast): void {
    this.onBroadcast(host, published, false);
    const { tag } = published;
    this.pending.set(tag, DELIVERED_HERE);
    setTimeout(() => this.pending.get(tag) === DELIVERED_HERE && this.pending.delete(tag), this.options.commandTimeout).unref();
  }

  /**
   * The bus subscription is lost: the publishes Redis has made and whose echo has not come yet
   * will never be heard here (the subscription that comes back hears only later ones), so this
   * node's sessions get them now; nor will the fences of reads, so nobody waits for them.
   */
  private echoesLost(): void {
    const host = this.host;
    if (!host || this.closing) return;
    this.catchUp.deafened((channel) => this.wanted(host, channel));
    this.seam.fencesLost();
    for (const waiting of [...this.pending.values()]) if (waiting.published) this.deliverHere(host, waiting.published());
  }

  /** A publish Redis recognised as a resend (see PublishOnce): nothing will come back on the bus. */
  private resent(tag: string): false {
    this.pending.delete(tag);
    return false;
  }

  /** The publication's bytes, cut where its position goes (Redis gives the position). */
  private aroundPosition(publication: Publication): [before: string, after: string] {
    const text = withPosition(publication, this.placeholder);
    const cut = text.lastIndexOf(this.placeholderJson);
    return [text.slice(0, cut), text.slice(cut + this.placeholderJson.length)];
  }

  // ---------------------------------------------------------------- one session, wherever it is

  async endSession(clientId: string): Promise<boolean> {
    const host = this.running();
    if (this.isLocal(clientId)) {
      host.onEndSession(clientId);
      return true;
    }
    return this.toOwner(clientId, encode({ kind: 'end', clientId }), 'end');
  }

  async sendTo(clientId: string, publication: Publication): Promise<boolean> {
    const { once } = publication;
    if (once === undefined) return this.sendToSession(clientId, publication);
    // Kept before it is sent, so that two tries at once cannot both send; forgotten when it could
    // not be sent, so that a retry is sent then. Kept with the session's partition (any will do).
    this.running();
    if (!this.connection.readyCmd()) throw unavailable(`a delivery with an idempotency key needs Redis, which holds the keys; retry once it answers`);
    const partition = this.layout.data(this.layout.partitionOf(clientId));
    const first = await this.connection.script('ONCE', partition, [once.client, once.id, once.keep, once.forMs]).catch((error: unknown) => {
      throw unavailable(`cannot deliver to ${clientId}`, error);
    });
    // Sent before, under this key: done.
    if (Number(first) === 0) return true;
    let sent = false;
    try {
      sent = await this.sendToSession(clientId, publication);
      return sent;
    } finally {
      if (!sent) await this.connection.script('FORGET_ONCE', partition, [once.client, once.id]).catch((error: unknown) => this.report(error));
    }
  }

  private async sendToSession(clientId: string, publication: Publication): Promise<boolean> {
    const host = this.running();
    if (this.isLocal(clientId)) {
      host.onDirect(publication, clientId);
      return true;
    }
    return this.toOwner(clientId, encode({ kind: 'direct', clientId, payload: publication.payload }), 'reach');
  }

  /**
   * Sends a bus message to the node that holds a session; false when no node holds it. Without
   * Redis the owner cannot be known: that is an outage (ERR_ENGINE_UNAVAILABLE), not an unknown session.
   */
  private async toOwner(clientId: string, message: string, what: string): Promise<boolean> {
    const cmd = this.connection.readyCmd();
    if (!cmd) throw unavailable(`cannot ${what} the node of session ${clientId}: Redis is away`);
    try {
      const node = await cmd.hget(`${this.layout.control}owner`, clientId);
      if (node === null) return false;
      const receivers = await this.connection.send(cmd, this.layout.node(node), message);
      return receivers > 0;
    } catch (error) {
      throw unavailable(`cannot ${what} the node of session ${clientId}`, error);
    }
  }

  // ---------------------------------------------------------------- reading shared state

  async usersOf(clientIds: readonly string[]): Promise<(string | null)[]> {
    this.running();
    if (clientIds.length === 0) return [];
    return this.connection.read(
      'users of sessions',
      async (cmd) => {
        // In slices: a channel's subscribers may be far more than a call can take as arguments.
        const users: (string | null)[] = [];
        for (let i = 0; i < clientIds.length; i += USERS_PER_READ) {
          users.push(...(await cmd.hmget(`${this.layout.control}user`, ...clientIds.slice(i, i + USERS_PER_READ))));
        }
        return users;
      },
      () => clientIds.map((clientId) => this.sessions.get(clientId)?.user ?? null),
    );
  }

  async sessionsOfUser(user: string): Promise<string[]> {
    this.running();
    return this.connection.read(
      `sessions of user ${user}`,
      (cmd) => cmd.smembers(`${this.layout.control}usess:${user}`),
      () => [...this.sessions].filter(([, local]) => !local.removed && local.user === user).map(([clientId]) => clientId),
    );
  }

  async history(channel: string, query: HistoryQuery = {}): Promise<HistoryPage | null> {
    const host = this.running();
    if (!this.connection.readyCmd()) throw unavailable(`cannot read the history of ${channel}`);
    const { since, limit } = query;
    const args = [channel, since ? 1 : 0, since?.epoch ?? '', since?.offset ?? 0, limit ?? -1];
    const reply = (await this.connection.script('HISTORY', this.layout.data(this.layout.partitionOf(channel)), args).catch((error: unknown) => {
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
    const partitions = Array.from({ length: this.layout.partitions }, (_, k) => this.layout.data(k));
    const stats = await this.connection.read('history stats', () => Promise.all(partitions.map((prefix) => this.connection.script('STATS', prefix, []))));
    let channels = 0;
    let messages = 0;
    for (const [partChannels, partMessages] of stats as Array<[number, number]>) {
      channels += Number(partChannels);
      messages += Number(partMessages);
    }
    return { channels, messages };
  }

  async subscribers(pattern: string): Promise<string[]> {
    this.running();
    const key = `${this.layout.control}subs:${pattern}`;
    return this.connection.read(`subscribers of ${pattern}`, (cmd) => cmd.smembers(key), () => this.index.subscribersOf(pattern));
  }

  async subscribedAmong(pattern: string, clientIds: readonly string[]): Promise<string[]> {
    this.running();
    if (clientIds.length === 0) return [];
    const key = `${this.layout.control}subs:${pattern}`;
    return this.connection.read(
      `subscribers of ${pattern}`,
      async (cmd) => {
        // SISMEMBER for each (a few sessions of one user), sent together: every Redis has it,
        // where SMISMEMBER needs 6.2.
        const member = await Promise.all(clientIds.map((clientId) => cmd.sismember(key, clientId)));
        return clientIds.filter((_, i) => member[i] === 1);
      },
      () => this.index.among(pattern, clientIds),
    );
  }

  async subscriberCount(pattern: string): Promise<number> {
    this.running();
    const key = `${this.layout.control}subs:${pattern}`;
    return this.connection.read(`subscribers of ${pattern}`, (cmd) => cmd.scard(key), () => this.index.count(pattern));
  }

  async channels(): Promise<Map<string, number>> {
    this.running();
    const counts: Record<string, string | number> = await this.connection.read<Record<string, string | number>>(
      'channels',
      (cmd) => cmd.hgetall(`${this.layout.control}counts`),
      () => Object.fromEntries(this.index.patterns()),
    );
    return new Map(Object.entries(counts).map(([pattern, count]) => [pattern, Number(count)]));
  }

  async ownerOf(clientId: string): Promise<string | null> {
    this.running();
    if (this.isLocal(clientId)) return null;
    const cmd = this.connection.readyCmd();
    if (!cmd) throw unavailable(`cannot look up the node of session ${clientId}`);
    const node = await cmd.hget(`${this.layout.control}owner`, clientId).catch((error: unknown) => {
      throw unavailable(`cannot look up the node of session ${clientId}`, error);
    });
    return node === this.nodeId ? null : node;
  }

  async sendToNode(node: string, payload: string): Promise<boolean> {
    this.running();
    const cmd = this.connection.readyCmd();
    if (!cmd) throw unavailable(`cannot send to node ${node}`);
    try {
      return (await this.mail.send(cmd, node, encode({ kind: 'node', from: this.nodeId, payload }))) > 0;
    } catch (error) {
      this.connection.degraded(error);
      throw unavailable(`cannot send to node ${node}`, error);
    }
  }

  nodeMailStats(): { stored: number; lost: number } {
    return this.mail.stats();
  }

  async claimState(channel: string): Promise<string | null> {
    this.running();
    if (!this.connection.readyCmd()) throw unavailable(`cannot claim the state channel ${channel}: Redis is away`);
    const holder = await this.connection.script('CLAIM_STATE', this.layout.control, [this.nodeId, channel, this.options.nodeTimeout]).catch((error: unknown) => {
      throw unavailable(`cannot claim the state channel ${channel}`, error);
    });
    if (holder !== '') return String(holder);
    this.stateClaims.add(channel);
    return null;
  }

  async stateHolder(channel: string): Promise<string | null> {
    this.running();
    if (!this.connection.readyCmd()) throw unavailable(`cannot look up the node of the state channel ${channel}: Redis is away`);
    const holder = await this.connection.script('STATE_HOLDER', this.layout.control, [channel, this.options.nodeTimeout]).catch((error: unknown) => {
      throw unavailable(`cannot look up the node of the state channel ${channel}`, error);
    });
    return holder === '' || holder === this.nodeId ? null : String(holder);
  }

  async releaseState(channel: string): Promise<void> {
    this.running();
    this.stateClaims.delete(channel);
    if (!this.connection.readyCmd()) return;
    // Not given up (Redis went away meanwhile): the claim dies with this node's heartbeat.
    await this.connection.script('RELEASE_STATE', this.layout.control, [this.nodeId, channel]).catch(() => undefined);
  }

  async census(): Promise<SessionInfo[]> {
    const host = this.running();
    if (!this.connection.readyCmd()) throw unavailable('cannot ask the other nodes for their sessions: Redis is away');
    return this.sessionCensus.take(host.describeSessions());
  }

  async markLeaving(channel: string, member: string, ttlMs: number): Promise<string> {
    this.running();
    const key = `${this.layout.control}leave:${markKey(channel, member)}`;
    const ttl = Math.max(1, Math.ceil(ttlMs));
    const token = markToken();
    await this.connection.read(
      `presence of ${channel}`,
      async (cmd) => void (await cmd.set(key, token, 'PX', ttl)),
      () => void this.leaving.mark(channel, member, Date.now() + ttl, token),
    );
    return token;
  }

  async takeLeaving(channel: string, member: string, token?: string): Promise<boolean> {
    this.running();
    const key = `${this.layout.control}leave:${markKey(channel, member)}`;
    // A mark set while Redis was away is this node's own; one in Redis is anyone's.
    const local = this.leaving.take(channel, member, Date.now(), token);
    const shared = await this.connection.read(
      `presence of ${channel}`,
      async (cmd) => (token === undefined ? (await cmd.del(key)) > 0 : Number(await this.connection.script('TAKE_MARK', this.layout.control, [key.slice(this.layout.control.length), token])) === 1),
      () => false,
    );
    return local || shared;
  }

  // ---------------------------------------------------------------- messages from the bus

  private onMessage(channel: string, text: string): void {
    if (!this.host) return;
    const message = decode(text);
    if (message instanceof BusFormatError) {
      this.report(new BusFormatError(`unreadable message on Redis channel ${channel}: ${message.message}`));
      return;
    }
    // This node's own channel is read in order, its large messages taken from their keys.
    if (channel === this.ownChannel) this.mail.receive(message);
    else this.read(message);
  }

  private read(message: BusMessage): void {
    const host = this.host;
    if (!host) return;
    switch (message.kind) {
      case 'broadcast':
        return this.onBroadcast(host, message);
      case 'direct':
        if (this.isLocal(message.clientId)) host.onDirect(remotePublication(null, message.payload), message.clientId);
        return;
      case 'fence':
        return this.seam.onFence(message.fence);
      case 'end':
        if (this.isLocal(message.clientId)) host.onEndSession(message.clientId);
        return;
      case 'census':
        return this.sessionCensus.onQuestion(message.origin, message.request, host.describeSessions());
      case 'answer':
        return this.sessionCensus.onAnswer(message.request, message.node, message.payload);
      case 'node':
        return host.onNodeMessage(message.from, message.payload);
      case 'mail':
        // Only this node's own channel carries them (above).
        return this.report(new BusFormatError(`a mail message on a channel other than this node's own: ${JSON.stringify(message.key)}`));
    }
  }

  /** A broadcast for this node's sessions: `heard` on the bus, or delivered here without its echo. */
  private onBroadcast(host: EngineHost, { origin, tag, channel, position, exclude, payload }: Broadcast, heard = true): void {
    const mine = origin === this.nodeId ? this.pending.get(tag) : undefined;
    if (mine === DELIVERED_HERE) {
      this.pending.delete(tag);
      return;
    }
    let publication: Publication;
    if (mine) {
      this.pending.delete(tag);
      publication = mine.publication;
      if (position) stampPosition(publication, position, payload);
    } else {
      publication = remotePublication(channel, payload, position);
      if (exclude !== undefined) publication.exclude = exclude;
    }
    if (!this.catchUp.held(channel, publication, (waited) => this.deliverLive(host, waited, true))) this.deliverLive(host, publication, heard);
    mine?.resolve();
  }

  /** Channels no session or in-process listener here wants any more (a wildcard's are forgotten at the next loss of the bus): no catch-up for them. */
  private forgetHeard(patterns: readonly string[]): void {
    const host = this.host;
    for (const pattern of patterns) if (!isWildcard(pattern) && !(host && this.wanted(host, pattern))) this.catchUp.forget(pattern);
  }

  /** Whether a session or an in-process listener here wants `channel`'s messages (and so its catch-up). */
  private wanted(host: EngineHost, channel: string): boolean {
    return this.index.match(channel).size > 0 || host.listensTo?.(channel) === true;
  }

  /**
   * Delivers a publication to this node's subscribers of its channel and its in-process
   * listeners, noting where the node heard up to (and leaving out what it heard before: see
   * CatchUp.heard).
   */
  private deliverLive(host: EngineHost, publication: Publication, heard: boolean): void {
    const { channel, position } = publication;
    const subscribers = this.index.match(channel);
    if (position && (subscribers.size > 0 || host.listensTo?.(channel) === true)) {
      if (!heard) this.catchUp.deliveredHere(channel, position);
      else if (!this.catchUp.heard(channel, position)) return;
    }
    host.onPublication(publication, this.seam.route(channel, publication, subscribers));
  }

  /**
   * This node subscribed to the bus again after a loss: its sessions get what was published on
   * their channels meanwhile, from the history, before the live messages of those channels
   * (redis-catch-up.ts). Needs the command connection: waited for up to `commandTimeout`. A read
   * that fails is tried again CATCH_UP_TRIES times in all, 250 ms later and doubling up to 4 s;
   * then the live messages that waited go out (and clients that track positions see the gap).
   */
  private catchUpLater(tried: number): void {
    this.catchingUp = this.catchingUp.then(() => this.catchUpAfterDeafness(tried));
  }

  private async catchUpAfterDeafness(tried: number): Promise<void> {
    const host = this.host;
    if (!host || this.closing) return;
    // Deaf again (a retry of a failed read coming due before the bus is back): a read now would
    // end the catch-up, and what is published between it and the renewed SUBSCRIBE would be
    // neither read nor heard. The channels stay due for the read the bus's return starts.
    if (!this.connection.hearing) return;
    const from = this.catchUp.takeDue();
    if (from.size === 0) return;
    const deliver = (publication: Publication): void => this.deliverLive(host, publication, true);
    // Reads by partition (the bus its channels' messages and its fence travel on), in batches.
    const reads: Array<[number, Array<[string, Position]>]> = [];
    const open = new Map<number, Array<[string, Position]>>();
    for (const entry of from) {
      const k = this.layout.partitionOf(entry[0]);
      let batch = open.get(k);
      if (!batch || batch.length >= CATCH_UP_BATCH) {
        open.set(k, (batch = []));
        reads.push([k, batch]);
      }
      batch.push(entry);
    }
    try {
      const deadline = Date.now() + this.options.commandTimeout;
      while (!this.connection.readyCmd() && Date.now() < deadline && !this.closing) await new Promise((resolve) => setTimeout(resolve, 50));
      if (!this.connection.readyCmd()) throw unavailable(`cannot read what this node missed while it did not hear Redis`);
      for (const [k, channels] of reads) {
        const fence = this.seam.fence(true);
        const subscription = this.connection.subscription;
        const args: Array<string | number> = [this.layout.publishCommand, encode({ kind: 'fence', fence: fence.id }), '', 0, 0, this.maxChannelsPerPartition(host), newEpoch(), Number.MAX_SAFE_INTEGER];
        for (const [channel, since] of channels) args.push(channel, since.epoch, since.offset);
        const reply = (await this.connection.script('READ', this.layout.data(k), args)) as unknown[];
        await this.fenceBack(fence, k, subscription);
        let at = 2;
        for (const [channel] of channels) {
          // Per channel: recovered (1 or 0), its epoch and offset now, how many payloads follow.
          const recovered = Number(reply[at]) === 1;
          const count = Number(reply[at + 3]);
          this.catchUp.end(channel, recovered ? reply.slice(at + 4, at + 4 + count).map(String) : [], deliver);
          at += 4 + count;
        }
      }
    } catch (error) {
      this.report(error);
      if (tried + 1 < CATCH_UP_TRIES && !this.closing) {
        this.catchUp.again(from.keys());
        setTimeout(() => this.catchUpLater(tried + 1), Math.min(250 * 2 ** tried, CATCH_UP_MAX_WAIT_MS)).unref();
        return;
      }
    }
    // Whatever was not caught up gets what waited, at once.
    this.catchUp.giveUp(from.keys(), deliver);
  }

  // ---------------------------------------------------------------- helpers

  /** Publishes on a pub/sub channel of the bus, if Redis can be reached now. */
  private async sendOnBus(channel: string, text: string): Promise<void> {
    const cmd = this.connection.readyCmd();
    if (cmd) await this.connection.send(cmd, channel, text);
  }

  private report(error: unknown): void {
    if (error instanceof PerihelionError && error.code === 'ERR_ENGINE_UNAVAILABLE') this.connection.troubled();
    this.host?.reportError(error);
  }

  private running(): EngineHost {
    if (!this.host || this.closing || !this.connection.opened) throw new PerihelionError('ERR_ENGINE_CLOSED', 'the Redis engine is not started or already closed');
    return this.host;
  }

  /** Whether this node holds the session (and it has not ended). */
  private isLocal(clientId: string): boolean {
    const local = this.sessions.get(clientId);
    return local !== undefined && !local.removed;
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

  /** This node's live sessions and their subscriptions, as Redis should know them. */
  private *registrations(): Iterable<Registration> {
    for (const [clientId, local] of this.sessions) {
      if (!local.removed) yield { clientId, user: local.user, patterns: this.index.subscriptionsOf(clientId) };
    }
  }

  private retention(channel: string): Retention {
    return this.running().historySettings.retentionFor(channel);
  }
}

/** A publication that came from another node: the message object is parsed only if someone asks for it. */
function remotePublication(channel: string | null, payload: string, position?: Position | null): Publication {
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

/** The publication's once for a data script's ARGV (client, id, keep, forMs), '' for the client when it has none. */
function onceArgs(publication: Publication): Array<string | number> {
  const { once } = publication;
  return once ? [once.client, once.id, once.keep, once.forMs] : ['', '', 0, 0];
}
