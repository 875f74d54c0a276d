/**
 * A session: the server's record of one handshaken client, whatever transport it uses now.
 *
 * Applications see the `Session` interface (events, listeners, extensions, `getSession`); the
 * server keeps the `ServerSession` behind it: its bounded queue of shared serialised messages
 * (OutboundQueue), the /meta/connect it holds, the push line it is bound to, its deadlines.
 * Local delivery (delivery.ts) queues messages and writes them once the work in hand is done: pushed
 * in one frame when the session is bound to a push connection (WebSocket, stream), or used to
 * answer its held /meta/connect (long-polling).
 */
import { isPositionedOn, isStreamedConnectionType, type ConnectionType, type Position } from '@perihelion/protocol';
import type { Identity } from '../security/identity.js';
import type { TokenBucket } from '../security/rate-limit.js';
import type { PushConnection } from './contract.js';
import type { DisconnectReason } from './events.js';
import type { SessionInfo } from '../engine/engine.js';
import type { Acknowledgement } from '../extensions/ack.js';
import { ChannelSet } from './channel-set.js';
import { OutboundQueue } from './outbound-queue.js';
import type { RecentIds } from '../engine/recent-ids.js';
import type { TimerHandle, TimerWheel } from './timer-wheel.js';

/**
 * Channels reached through patterns whose first position a session keeps (see
 * firstSentThroughPattern), the latest first sent: a line that dies swallows what was sent last.
 */
export const MAX_PATTERN_CHANNELS = 64;

/** A session as applications see it. */
export interface Session {
  /** The clientId. */
  readonly id: string;
  /** Who the session belongs to; null for an anonymous session. */
  readonly identity: Identity | null;
  /** Connection type named by the latest /meta/connect; null before the first. */
  readonly connectionType: ConnectionType | null;
  /** Channels and patterns the session subscribes to. */
  readonly subscriptions: ReadonlySet<string>;
  /** Free for applications. */
  readonly data: Map<string, unknown>;
  /** The remote address it was handshaken from. */
  readonly remoteAddress: string | undefined;
  /** Sends `data` on `channel` to this session only (e.g. the answer to a /service request); throws for data JSON cannot hold. */
  deliver(channel: string, data: unknown): void;
  /** Ends the session from the server side, as if the client had sent /meta/disconnect. */
  disconnect(): void;
}

export type ReleaseReason = 'message' | 'timeout' | 'superseded' | 'disconnected' | 'shutdown' | 'token-expired' | 'slow-consumer';

/**
 * How a session's end releases its held connect: shutting down (come back soon), an expired
 * token or an overflowed queue (handshake again), or else `disconnected` (stay away: meta/connect.ts
 * answers it with advice `reconnect: "none"`).
 */
export function releaseOnEnd(reason: DisconnectReason): ReleaseReason {
  return reason === 'shutdown' || reason === 'token-expired' || reason === 'slow-consumer' ? reason : 'disconnected';
}

export interface Release {
  reason: ReleaseReason;
  /** Serialised messages to send after the connect reply. */
  events: string[];
}

/**
 * A held /meta/connect (made by core/meta/connect.ts): answered once, when released. A record
 * rather than a promise and its closures: every idle session holds one, for as long as it lives.
 */
export interface HeldConnect {
  /** The push line it will be answered on; none for long-polling, whose HTTP response answers it. */
  readonly connection: PushConnection | undefined;
  answer(release: Release): void;
}

/** What a session needs from the server that owns it (local delivery, delivery.ts). */
export interface SessionHost {
  readonly wheel: TimerWheel;
  /** Writes what the session has queued once the work in hand is done, with every other session's. */
  scheduleFlush(session: ServerSession): void;
  /** Ends a session that stopped connecting (Bayeux §Connect, "maxInterval"). */
  expire(session: ServerSession): void;
  deliverTo(session: ServerSession, channel: string, data: unknown): void;
  /** Reports how long the oldest of the messages just written waited, in ms. */
  readonly observeDelivery: (waitedMs: number, writes?: number) => void;
  disconnectSession(session: ServerSession): void;
}

export class ServerSession implements Session {
  /** Connection type named by the latest /meta/connect. */
  connectionType: ConnectionType | null = null;
  /** The push line this session is bound to, if any (latest WebSocket that spoke for it). */
  connection: PushConnection | null = null;
  readonly queue: OutboundQueue;
  /** Channels and patterns this session subscribes to (mirrors the engine, for limits and clean-up). */
  readonly subscriptions = new ChannelSet();
  /**
   * The first position this session was sent on each channel that only its patterns reach (the
   * latest MAX_PATTERN_CHANNELS channels): a client that comes back on the same session names the
   * channels it received from; one it does not name never reached it, and is recovered from here.
   */
  firstSentThroughPattern: Map<string, Position> | null = null;
  /** Set once the session has answered its first /meta/connect. */
  connected = false;
  /** Set while the session waits in local delivery's list of sessions to flush this turn. */
  flushPending = false;
  private appData: Map<string, unknown> | null = null;
  ended = false;
  /** Who the session belongs to; null for an anonymous session. */
  identity: Identity | null = null;
  /** The browser (BAYEUX_BROWSER cookie) and remote address it was handshaken from. */
  browserId: string | undefined;
  /** Set once the client presented `browserId` (see security/session-binding.ts). */
  browserConfirmed = false;
  remoteAddress: string | undefined;
  /** The push line it was handshaken on, which may always speak for it. */
  origin: PushConnection | undefined;
  /** Ends the session when its credentials expire. */
  tokenExpiry: TimerHandle | null = null;
  /** Publishes allowed per second (null: no limit), and how many were refused in a row. */
  publishBucket: TokenBucket | null = null;
  /** The channels it subscribes to and unsubscribes from, counted against `subscribeRate`; null: no limit. */
  subscribeBucket: TokenBucket | null = null;
  refusedPublishes = 0;
  /** At-least-once delivery state, when the client uses the CometD ack extension. */
  ack: Acknowledgement | null = null;
  /** Ids of the latest publishes, to publish a resent message once (created on first use). */
  recentPublishes: RecentIds | null = null;
  /** The client instance it belongs to (`ext.instance` of its handshake, with its user), whose sessions share publish ids; null: none said. */
  instance: string | null = null;
  /**
   * The client asked at handshake (`ext.skips`) to be told of each position on its channels that
   * is not sent to it (`exclude`, `ext.echo: false`): it tracks positions, and would take the
   * hole for messages lost (see LocalDelivery.onPublication).
   */
  skipNotes = false;

  /**
   * The held /meta/connect, when it is due to be answered empty (ms, the wheel's clock), and the
   * session's one deadline for it. The deadline is moved rather than replaced: it may fire early
   * (a deadline of an earlier hold) and then waits for the rest. A long-poll holds a connect per
   * request, and a wheel entry made and cancelled for each (and one for expiry) was a measurable
   * part of answering one.
   */
  private held: HeldConnect | null = null;
  private heldDue = 0;
  private heldTimer: TimerHandle | null = null;
  /** When the session expires unless a connect comes (ms, the wheel's clock), and its deadline, moved the same way. */
  private expiresAt = 0;
  private expiry: TimerHandle | null = null;

  constructor(
    readonly id: string,
    private readonly host: SessionHost,
    maxQueue: number,
  ) {
    this.queue = new OutboundQueue(maxQueue);
  }

  /** Free for applications (made on first use: most sessions never need it). */
  get data(): Map<string, unknown> {
    this.appData ??= new Map();
    return this.appData;
  }

  /** What the application put in `data`, without making it (describing a session must not). */
  get dataIfAny(): ReadonlyMap<string, unknown> | null {
    return this.appData;
  }

  /** Sends `data` on `channel` to this session only (e.g. the answer to a /service request). */
  deliver(channel: string, data: unknown): void {
    this.host.deliverTo(this, channel, data);
  }

  /** Ends the session from the server side, as if the client had sent /meta/disconnect. */
  disconnect(): void {
    this.host.disconnectSession(this);
  }

  get holding(): boolean {
    return this.held !== null;
  }

  /**
   * Whether its messages go out only in /meta/connect replies, even on a push line: a session
   * using the ack extension, on long-polling or a WebSocket. Each reply then closes the batch it
   * carries, so a batch is received whole or written again whole: nothing twice, nothing out of
   * order, whichever moment a line dies (CometD's server does the same for acknowledged
   * sessions, "metaConnectDeliveryOnly"). Pushed batches would be acknowledged by a later reply,
   * and a line cut between the two has the client receive them again. The streamed types answer
   * their connects at once: their messages always take the stream.
   */
  get deliversInConnectReplies(): boolean {
    return this.ack !== null && (this.connectionType === null || !isStreamedConnectionType(this.connectionType));
  }

  /** Whether its messages are written to its push line as they come. */
  get pushing(): boolean {
    return this.connection?.open === true && !this.deliversInConnectReplies;
  }

  /**
   * Queues messages the session missed on `channel` (a recovery), in order, all of them. What is
   * still queued of that channel's history goes first: the replay holds it too, and keeping it
   * would put newer messages ahead of older ones (a subscribe resent on the same session, or a
   * channel already covered by a wildcard subscription).
   */
  replay(channel: string, payloads: readonly string[]): void {
    if (this.ended) return;
    this.queue.removeWhere((payload) => isPositionedOn(channel, payload));
    this.queue.pushAll(payloads);
    this.host.scheduleFlush(this);
  }

  /** Notes a positioned message sent to it on `channel`, which only its patterns reach. */
  sentThroughPattern(channel: string, position: Position): void {
    const first = (this.firstSentThroughPattern ??= new Map());
    if (first.has(channel)) return;
    // The channel first sent longest ago goes: its messages are the likeliest to have arrived.
    if (first.size >= MAX_PATTERN_CHANNELS) first.delete(first.keys().next().value!);
    first.set(channel, position);
  }

  /** Queues messages again, ahead of everything else: unacknowledged ones (ack extension), or ones a relay line lost. */
  resend(payloads: readonly string[]): void {
    if (this.ended || payloads.length === 0) return;
    this.queue.unshiftAll(payloads);
    this.host.scheduleFlush(this);
  }

  bind(connection: PushConnection): void {
    if (this.connection === connection) return;
    this.connection = connection;
    connection.watch(this);
    if (this.queue.length > 0) this.host.scheduleFlush(this);
  }

  /** A line this session was bound to closed (LineWatcher). */
  lineClosed(line: PushConnection): void {
    this.unbind(line);
  }

  /** What was written to a line that never reached it (LineWatcher): queued again, for the next connect. */
  lineReturned(_line: PushConnection, payloads: readonly string[]): void {
    this.resend(payloads);
  }

  /** A congested line this session was bound to drained (LineWatcher): what waited goes out. */
  lineDrained(line: PushConnection): void {
    if (this.connection === line && this.queue.length > 0) this.host.scheduleFlush(this);
  }

  unbind(connection: PushConnection): void {
    if (this.connection === connection) this.connection = null;
    // A connect held on this line can no longer be answered: let it go, keeping the queue for
    // the next connect (on whatever line the client comes back).
    if (this.held?.connection === connection) this.release('superseded');
  }

  /**
   * Holds a /meta/connect until a message is due or `timeoutMs` passes. A newer connect for the
   * same session releases the older one at once: the newest connect is the line the client is
   * listening on (the older may belong to a request a proxy already dropped), so at most one is
   * ever held.
   */
  hold(timeoutMs: number, connect: HeldConnect): void {
    this.release('superseded');
    // Expiry waits while a connect is held (see scheduleExpiry's deadline), and is armed again
    // when the connect is answered.
    this.held = connect;
    const { wheel } = this.host;
    this.heldDue = wheel.time() + Math.max(0, timeoutMs);
    const timer = this.heldTimer;
    if (timer !== null && !timer.cancelled && timer.due <= this.heldDue) return; // fires first, then waits for the rest
    wheel.cancel(timer);
    this.heldTimer = wheel.schedule(timeoutMs, ServerSession.holdTimedOut, this);
  }

  /**
   * The deadline of a held connect. The deadlines of every session call these shared functions
   * with their session: a closure per session would cost an object or two each, for as long as
   * it lives.
   */
  private static holdTimedOut(session: ServerSession): void {
    session.heldTimer = null;
    if (session.held === null) return;
    const left = session.heldDue - session.host.wheel.time();
    if (left > 0) session.heldTimer = session.host.wheel.schedule(left, ServerSession.holdTimedOut, session);
    else session.release('timeout');
  }

  /** Answers a connect held on a line that cannot push (long-polling), if there is one. */
  releaseLongPoll(): void {
    if (this.held && !this.held.connection) this.release('message');
  }

  /** Answers the held connect, if there is one, when its reply is how queued messages go out. */
  releaseToDeliver(): void {
    if (this.held && (!this.held.connection || this.deliversInConnectReplies)) this.release('message');
  }

  release(reason: ReleaseReason): void {
    const held = this.held;
    if (!held) return;
    this.held = null;
    // A superseded connect leaves the queue to its successor; every other release carries it,
    // unless the connect was held on a push line (which carries messages by itself).
    const carries = reason !== 'superseded' && (this.deliversInConnectReplies || (!held.connection && !this.connection?.open));
    const events = carries ? this.takeQueued() : [];
    held.answer({ reason, events });
  }

  /** Removes what is queued for writing now, reporting how long the oldest message waited. */
  takeQueued(now = Date.now()): string[] {
    if (this.queue.length === 0) return [];
    this.host.observeDelivery(now - this.queue.oldestAt);
    // One message, the usual case: the queue keeps its array for the next one (see takeOnly).
    const payloads = this.queue.length === 1 ? [this.queue.takeOnly()] : this.queue.drain();
    this.ack?.written(payloads);
    return payloads;
  }

  /**
   * Arms expiry: the session ends unless a new connect arrives within `ms` (Bayeux §Connect,
   * "maxInterval"). A session whose push line (WebSocket, SSE, stream) is still open is alive:
   * the check is repeated instead.
   */
  scheduleExpiry(ms: number): void {
    if (this.ended) return;
    this.expiryMs = ms;
    const { wheel } = this.host;
    this.expiresAt = wheel.time() + ms;
    const timer = this.expiry;
    if (timer !== null && !timer.cancelled && timer.due <= this.expiresAt) return; // fires first, then waits for the rest
    wheel.cancel(timer);
    this.expiry = wheel.schedule(ms, ServerSession.expiryDue, this);
  }

  /** The span of the expiry last armed. */
  private expiryMs = 0;

  /** The deadline of the session's expiry (shared, as holdTimedOut). */
  private static expiryDue(session: ServerSession): void {
    session.expiry = null;
    // Held: the connect's answer arms expiry again.
    if (session.held !== null || session.ended) return;
    const left = session.expiresAt - session.host.wheel.time();
    if (left > 0) session.expiry = session.host.wheel.schedule(left, ServerSession.expiryDue, session);
    else if (session.connection?.open) session.scheduleExpiry(session.expiryMs);
    else session.host.expire(session);
  }

  /** Cancels the session's deadlines: it has ended. */
  cancelDeadlines(): void {
    this.host.wheel.cancel(this.expiry);
    this.expiry = null;
    this.host.wheel.cancel(this.heldTimer);
    this.heldTimer = null;
  }
}

/**
 * A session described as plain JSON (`server.sessions()`, `deliverWhere`): with a cluster engine
 * the description crosses to the node that asked. Entries of `data` that JSON cannot hold (a
 * function, a BigInt, a cycle) are left out instead of failing the whole description.
 */
export function describeSession(session: Session): SessionInfo {
  const data: Record<string, unknown> = {};
  const entries = session instanceof ServerSession ? session.dataIfAny : session.data;
  for (const [key, value] of entries ?? []) {
    try {
      const json = JSON.stringify(value);
      if (json !== undefined) data[key] = JSON.parse(json) as unknown;
    } catch {
      // Not JSON: stays on this node.
    }
  }
  const { identity } = session;
  return {
    clientId: session.id,
    user: identity?.id ?? null,
    roles: identity ? [...identity.roles] : [],
    claims: identity ? { ...identity.claims } : {},
    data,
    connectionType: session.connectionType,
    subscriptions: [...session.subscriptions],
  };
}
