/**
 * Local delivery: this node's sessions, and how a publication reaches them (DESIGN.md, steps 4–6).
 *
 * The engine calls back here (EngineHost) with each publication and the ids of this node's
 * sessions subscribed to its channel. Each session gets a reference to the one serialised
 * payload in its bounded queue, where the overflow policy (`queueOverflow`) applies. Once the work
 * in hand is done, every session with something queued writes it in one write: one frame on its
 * push line (WebSocket, stream), or the answer to its held long-poll connect. Sessions call back
 * here too (SessionHost) to be flushed, to expire, and to be ended; ending a session is here.
 */
import { isService, type Position } from '@perihelion/protocol';
import type { Engine, EngineHost, LostSession, Publication, SessionInfo } from '../engine/engine.js';
import type { HistorySettings } from '../engine/history.js';
import type { ExtensionPipeline } from '../extensions/pipeline.js';
import type { ResolvedOptions } from '../options.js';
import { checkData, checkDeliveryChannel } from './application-input.js';
import type { DisconnectReason, ServerEventEmitter } from './events.js';
import type { ListenerRegistry } from './listeners.js';
import { prepare } from './publish.js';
import { PublishIdsByClient } from '../engine/recent-ids.js';
import { describeSession, releaseOnEnd, type ServerSession, type SessionHost } from './session.js';
import type { TimerWheel } from './timer-wheel.js';

export interface ServerStats {
  sessions: number;
  sessionsByTransport: Record<string, number>;
  messagesIn: number;
  published: number;
  deliveries: number;
  queueDrops: number;
  /** Sessions ended because their queue overflowed (`queueOverflow: "disconnect"`). */
  slowConsumers: number;
  /** Resent publishes recognised by their id and not published again. */
  duplicatePublishes: number;
  /** Messages replayed to recovering clients. */
  replayed: number;
  /** Messages written again for the ack extension. */
  resent: number;
  /** Times a WebSocket stopped being read: `maxPendingFrames` of its frames (or `maxRequestBytes` of them) waited, or its replies could not be sent. */
  readsPaused: number;
  /** WebSocket upgrades refused because `maxWebsocketsPerIp` were open from their address. */
  websocketsRefused: number;
  /** Long-polls answered at once and streams refused because their browser held `maxSessionsPerBrowser` lines already. */
  pastBrowserLimit: number;
}

/** The server's running totals (every stat but the sessions), counted where each happens. */
export type Counters = Omit<ServerStats, 'sessions' | 'sessionsByTransport'>;

export interface DeliveryParts {
  options: Pick<ResolvedOptions, 'queueOverflow' | 'maxChannelLength' | 'publishDedup'>;
  engine: Engine;
  events: ServerEventEmitter;
  /** For `session.deliver`: its message passes the outgoing extensions like any publication. */
  extensions: ExtensionPipeline;
  /** In-process listeners, which see every broadcast publication of the cluster. */
  listeners: ListenerRegistry;
  wheel: TimerWheel;
  historySettings: HistorySettings;
  /** Told how long the oldest of the messages just written waited, in ms, for `writes` writes (delivery latency metrics). */
  observeDelivery: (waitedMs: number, writes?: number) => void;
}

export class LocalDelivery implements EngineHost, SessionHost {
  readonly sessions = new Map<string, ServerSession>();
  readonly counters: Counters = { messagesIn: 0, published: 0, deliveries: 0, queueDrops: 0, slowConsumers: 0, duplicatePublishes: 0, replayed: 0, resent: 0, readsPaused: 0, websocketsRefused: 0, pastBrowserLimit: 0 };
  readonly wheel: TimerWheel;
  readonly historySettings: HistorySettings;
  readonly observeDelivery: (waitedMs: number, writes?: number) => void;
  private readonly options: DeliveryParts['options'];
  private readonly engine: Engine;
  private readonly events: ServerEventEmitter;
  private readonly extensions: ExtensionPipeline;
  private readonly listeners: ListenerRegistry;
  /** What the sessions of each remote address hold (for `maxSessionsPerIp`, `maxSubscriptionsPerIp`). */
  private readonly byAddress = new Map<string, { sessions: number; subscriptions: number }>();
  /**
   * The sessions of each authenticated user (`server.sessionsOf`, asked per request by some
   * applications: a walk of every session would cost milliseconds with 100 000 of them). A
   * session's identity is set at its handshake, before it is added, and never changes.
   */
  private readonly byUser = new Map<string, Set<ServerSession>>();
  /** Publish ids per client instance, shared by its sessions (see PublishIdsByClient). */
  readonly publishIds: PublishIdsByClient;
  /** Sessions with something to write this turn (each once: see ServerSession.flushPending). */
  private dirty: ServerSession[] = [];
  private flushScheduled = false;
  /**
   * The flush's latency observations, told in runs: a fan-out flushes every subscriber of a
   * publication with the same wait, which is observed once with their count.
   */
  private waitedMs = 0;
  private waitedWrites = 0;

  constructor(parts: DeliveryParts) {
    this.options = parts.options;
    this.engine = parts.engine;
    this.events = parts.events;
    this.extensions = parts.extensions;
    this.listeners = parts.listeners;
    this.wheel = parts.wheel;
    this.historySettings = parts.historySettings;
    this.observeDelivery = parts.observeDelivery;
    this.publishIds = new PublishIdsByClient(parts.options.publishDedup);
  }

  // ---------------------------------------------------------------- this node's sessions

  /** Adds a session just handshaken from `address`. */
  add(session: ServerSession, address: string): void {
    this.sessions.set(session.id, session);
    const user = session.identity?.id;
    if (user !== undefined) {
      const sessions = this.byUser.get(user);
      if (sessions) sessions.add(session);
      else this.byUser.set(user, new Set([session]));
    }
    const held = this.byAddress.get(address);
    if (held) held.sessions++;
    else this.byAddress.set(address, { sessions: 1, subscriptions: 0 });
  }

  /** The live sessions of an authenticated user on this node. */
  sessionsOfUser(user: string): ServerSession[] {
    const sessions = this.byUser.get(user);
    return sessions === undefined ? [] : [...sessions];
  }

  /** Live sessions handshaken from `address` (for `maxSessionsPerIp`). */
  countFrom(address: string): number {
    return this.byAddress.get(address)?.sessions ?? 0;
  }

  /** Subscriptions held by the sessions of `address` (for `maxSubscriptionsPerIp`). */
  subscriptionsFrom(address: string): number {
    return this.byAddress.get(address)?.subscriptions ?? 0;
  }

  /** A session's subscriptions grew (or shrank, by a negative `count`). */
  subscribed(session: ServerSession, count: number): void {
    const held = this.byAddress.get(session.remoteAddress ?? 'unknown');
    if (held) held.subscriptions += count;
  }

  stats(): ServerStats {
    const byTransport: Record<string, number> = {};
    for (const session of this.sessions.values()) {
      const key = session.connectionType ?? 'handshaken';
      byTransport[key] = (byTransport[key] ?? 0) + 1;
    }
    return { sessions: this.sessions.size, sessionsByTransport: byTransport, ...this.counters };
  }

  // ---------------------------------------------------------------- EngineHost: from the engine

  onPublication(publication: Publication, clientIds: Iterable<string>): void {
    const { payload, exclude, channel, position } = publication;
    // For the other nodes only: here every session is as the excluded one.
    const everywhere = publication.elsewhere !== true;
    const now = Date.now();
    for (const id of clientIds) {
      const session = this.sessions.get(id);
      if (!session) continue;
      if (id !== exclude && everywhere) {
        this.enqueue(session, payload, now);
        // A channel only a pattern reaches: where it started for this session, for a recovery
        // that cannot name it (see meta/subscribe.ts).
        if (position !== undefined && session.subscriptions.hasPattern && !session.subscriptions.has(channel)) session.sentThroughPattern(channel, position);
      } else if (session.skipNotes && position !== undefined) this.enqueue(session, skipNote(channel, position), now);
    }
    if (everywhere && this.listeners.hearsBroadcasts && !isService(publication.channel)) void this.listeners.notify(publication.message, null);
  }

  onDirect(publication: Publication, clientId: string): void {
    const session = this.sessions.get(clientId);
    if (session) this.enqueue(session, publication.payload);
  }

  onEndSession(clientId: string): void {
    const session = this.sessions.get(clientId);
    if (session) this.end(session, 'server');
  }

  onReplay(clientId: string, channel: string, payloads: readonly string[]): void {
    const session = this.sessions.get(clientId);
    if (!session) return;
    this.counters.replayed += payloads.length;
    this.counters.deliveries += payloads.length;
    session.replay(channel, payloads);
  }

  /** Where messages from other nodes go (core/forwarding.ts, set by the core). */
  nodeMessages: ((from: string, payload: string) => void) | null = null;

  onNodeMessage(from: string, payload: string): void {
    this.nodeMessages?.(from, payload);
  }

  /** Where the sessions of a dead node go (presence, set by the core). */
  sessionsLost: ((sessions: readonly LostSession[]) => void) | null = null;

  onSessionsLost(sessions: readonly LostSession[]): void {
    this.sessionsLost?.(sessions);
  }

  /** Where the news that this node's sessions are registered again goes (presence, set by the core). */
  sessionsRestored: (() => void) | null = null;

  /** Where the news that another node took one of this node's state channels goes (set by the server). */
  stateLost: ((channel: string, holder: string) => void) | null = null;

  onStateLost(channel: string, holder: string): void {
    this.stateLost?.(channel, holder);
  }

  onSessionsRestored(): void {
    this.sessionsRestored?.();
  }

  listensTo(channel: string): boolean {
    return this.listeners.hearsBroadcasts && !isService(channel) && this.listeners.match(channel).length > 0;
  }

  describeSessions(): SessionInfo[] {
    const infos: SessionInfo[] = [];
    for (const session of this.sessions.values()) infos.push(describeSession(session));
    return infos;
  }

  reportError(error: unknown): void {
    this.events.emit('error', error);
  }

  /** Where the news that the engine is whole again goes (the core adds what it did not report meanwhile). */
  restored: ((message: string) => void) | null = null;

  reportRestored(message: string): void {
    if (this.restored) this.restored(message);
    else this.events.emit('restored', message);
  }

  // ---------------------------------------------------------------- queue and flush

  /** Queues the shared payload for one session, applying the overflow policy. */
  private enqueue(session: ServerSession, payload: string, now = Date.now()): void {
    this.counters.deliveries++;
    if (this.options.queueOverflow === 'disconnect' && session.queue.full) {
      // A consumer this far behind is cut loose; its client handshakes again and recovers.
      this.counters.slowConsumers++;
      this.end(session, 'slow-consumer');
      return;
    }
    if (session.ended) {
      // Ended meanwhile (a `session.deliver` that outlived it): nowhere to go.
      this.counters.queueDrops++;
      return;
    }
    // A full queue drops its oldest message (`drop-oldest`), counted.
    if (!session.queue.push(payload, now)) this.counters.queueDrops++;
    this.scheduleFlush(session);
  }

  scheduleFlush(session: ServerSession): void {
    if (session.flushPending) return;
    session.flushPending = true;
    this.dirty.push(session);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Everything a session is owed by the work in hand (one timer tick's publishes, one incoming
    // frame or request) goes out in one write, as soon as that work is done: a microtask, not the
    // next turn of the event loop, which would cost a poll of its own for every publish that
    // comes alone (measured: CPU per delivery to 1 000 channels at 1 000 msg/s 145 -> 86 us).
    queueMicrotask(this.flushTurn);
  }

  /** flushNow for queueMicrotask, made once rather than a closure per flush. */
  private readonly flushTurn = (): void => this.flushNow();

  /** Writes every session that has something queued (once the work in hand is done, and at shutdown). */
  flushNow(): void {
    this.flushScheduled = false;
    const sessions = this.dirty;
    this.dirty = [];
    const now = Date.now();
    for (const session of sessions) {
      session.flushPending = false;
      this.write(session, now);
    }
    this.observeWaits();
  }

  private noteWait(ms: number): void {
    if (ms !== this.waitedMs) {
      this.observeWaits();
      this.waitedMs = ms;
    }
    this.waitedWrites++;
  }

  private observeWaits(): void {
    if (this.waitedWrites === 0) return;
    this.observeDelivery(this.waitedMs, this.waitedWrites);
    this.waitedWrites = 0;
  }

  /**
   * Writes what a session has queued to wherever it can go now: its push line, or the answer to
   * its held long-poll connect. `now` is the flush's clock (one read for every session flushed);
   * the flush observes the wait (a `write` outside one is observed at the next).
   */
  write(session: ServerSession, now: number): void {
    const { queue } = session;
    const queued = queue.length;
    if (queued === 0 || session.ended) return;
    const line = session.connection;
    if (line !== null && session.pushing) {
      // A congested line is written again when it drains; meanwhile the bounded queue holds.
      if (line.congested) return;
      if (queued === 1 && session.ack === null) {
        // The usual case, one publish since the last flush: no arrays on the way to the socket.
        this.noteWait(now - queue.oldestAt);
        line.sendOne(queue.takeOnly());
      } else line.send(session.takeQueued(now));
    } else session.releaseToDeliver();
  }

  // ---------------------------------------------------------------- SessionHost: from a session

  deliverTo(session: ServerSession, channel: string, data: unknown): void {
    checkDeliveryChannel(channel, this.options.maxChannelLength);
    checkData(data, 'deliver');
    const deliver = (publication: Publication | null): void => {
      if (publication) this.enqueue(session, publication.payload);
    };
    // Data JSON cannot hold throws here, to the caller; an asynchronous extension's failure is reported.
    const prepared = prepare(this.extensions, { channel, data }, session);
    if (prepared instanceof Promise) prepared.then(deliver, (error: unknown) => this.reportError(error));
    else deliver(prepared);
  }

  expire(session: ServerSession): void {
    this.end(session, 'expired');
  }

  disconnectSession(session: ServerSession): void {
    this.end(session, 'server');
  }

  // ---------------------------------------------------------------- ending a session

  end(session: ServerSession, reason: DisconnectReason): void {
    if (session.ended) return;
    session.ended = true;
    session.cancelDeadlines();
    this.wheel.cancel(session.tokenExpiry);
    session.release(releaseOnEnd(reason));
    this.sessions.delete(session.id);
    const user = session.identity?.id;
    if (user !== undefined) {
      const sessions = this.byUser.get(user);
      if (sessions?.delete(session) && sessions.size === 0) this.byUser.delete(user);
    }
    const address = session.remoteAddress ?? 'unknown';
    const held = this.byAddress.get(address);
    if (held) {
      held.subscriptions -= session.subscriptions.size;
      if (--held.sessions <= 0) this.byAddress.delete(address);
    }
    session.subscriptions.clear();
    // Its publish ids wait for its client's next session (a resend there is recognised).
    if (session.instance !== null && session.recentPublishes !== null) this.publishIds.ended(session.instance, session.recentPublishes);
    // A stream serves one session only: it ends with it (a WebSocket may carry others).
    session.connection?.sessionEnded(reason);
    void this.engine.removeSession(session.id).catch((error: unknown) => this.reportError(error));
    this.events.emit('disconnect', session, reason);
  }
}

/**
 * What a session that tracks positions (`skipNotes`) is sent instead of a message it is excluded
 * from: the position alone, marked `skip`, without data, so that the next one is no gap for it.
 */
function skipNote(channel: string, position: Position): string {
  return `{"channel":${JSON.stringify(channel)},"ext":{"position":${JSON.stringify(position)},"skip":true}}`;
}
