/**
 * The subscriptions the session holds on the server (one per pattern, whatever the number of
 * handlers), and the positions that let them recover what was missed.
 *
 * When the server keeps history, every delivery carries `ext.position = {epoch, offset}`. The
 * last one seen on each channel is kept: a message at or before it is dropped (no handler sees
 * one twice), a subscribe after a reconnection asks for what followed it (`ext.recover`), and a
 * skipped offset is a gap that the session recovers by starting over from it.
 *
 * A pattern is `wanted` (to be sent once connected), `sending` (the subscribe is on its way) or
 * `active`. An active one whose line died is also due a resync: the same subscribe again, with
 * `ext.recover`, on the same session.
 */
import { asPosition, isWildcard, matches, type Message, type Position } from '@perihelion/protocol';
import { backoff } from './backoff.js';
import type { State } from './bayeux.js';
import type { BackendEvents } from './client.js';
import { ClientError } from './errors.js';
import type { ResolvedOptions } from './options.js';
import type { Outbox } from './outbox.js';

export type { Position };

/** The most messages held at once while resyncs are answered (see Subscriptions.hold). */
const MAX_HELD = 10_000;
/**
 * How soon a recovery the server could not answer (its history out of reach) is asked again, ms:
 * a backoff with full jitter from the first to the most, never sooner than the least. Every
 * client of a node cut off from Redis is told so at once; jitter keeps them from all asking again
 * in the same instant, every time, for as long as it lasts.
 */
const ASK_AGAIN_LEAST_MS = 100;
const ASK_AGAIN_FIRST_MS = 250;
const ASK_AGAIN_MOST_MS = 8_000;

export interface RecoveryOutcome {
  /** Whether every channel recovered without loss; false: the application must reload its state. */
  recovered: boolean;
  channels: Record<string, boolean>;
}

export interface SubscribeOutcome {
  /** Undefined on a first subscription (nothing to recover), unless it was given positions (`since`). */
  recovered: boolean | undefined;
}

interface PatternState {
  status: 'wanted' | 'sending' | 'active';
  /**
   * A subscribe for it has left on this session: the server may hold it even while it is wanted
   * again (the reply was lost with its line, or came too late), so a release must unsubscribe.
   */
  sent?: boolean;
  /**
   * Active on the server, but the line it was delivered on died: what that line swallowed is
   * asked for again once connected, by a subscribe with `ext.recover` on the same session
   * ("due"), which the server answers like a first one, replaying from the positions ("sent").
   * "later": the server could not read its history when asked; asked again after a backoff.
   */
  resync?: 'due' | 'sent' | 'later' | undefined;
  /** How many times the server could not answer its recovery in a row (see askAgainLater). */
  askedAgain?: number | undefined;
  /**
   * The resync follows a move to another line (leaving a stream that may have carried deliveries
   * unread), not a lost one: only a loss is news then, since the application saw no cut.
   */
  afterMove?: boolean | undefined;
  /** The `ext.recover` of the subscribe on its way, if it carries one. */
  recover?: Record<string, Position> | undefined;
  /** It was active on a session before (so a subscribe on a new one is a return, maybe after a loss). */
  wasActive?: boolean;
  waiters: { resolve(outcome: SubscribeOutcome): void; reject(error: ClientError): void }[];
  outcome: SubscribeOutcome;
}

/** What the registry needs of the session. */
export interface SubscriptionsSession {
  readonly state: State;
  /** The session ended under a subscribe: a new one, after the backoff. */
  retry(step: 'handshake', reason: string): void;
  /** A gap: a new session at once, that subscribes everything again from the last positions. */
  rehandshake(reason: string): void;
}

export class Subscriptions {
  private readonly patterns = new Map<string, PatternState>();
  private readonly positions = new Map<string, Position>();
  /**
   * Patterns released while the server may still hold them for this session: unsubscribed again
   * once connected, until the server has answered (a lost line or a timeout leaves them here).
   */
  private readonly releasing = new Map<string, 'due' | 'sent'>();
  /** Deliveries are dropped from a gap until the new session has re-subscribed. */
  dropping = false;
  /**
   * Messages of channels seen through a wildcard but never received from, which came while a
   * resync of that wildcard was due or on its way, by channel, in arrival order (see `hold`).
   */
  private readonly held = new Map<string, Message[]>();
  private heldCount = 0;

  constructor(
    private readonly session: SubscriptionsSession,
    private readonly outbox: Outbox,
    private readonly events: BackendEvents,
    private readonly options: ResolvedOptions,
  ) {}

  /**
   * The server-side subscription to `pattern` (one per pattern, whatever the number of handlers).
   * `since`: positions to recover from, taken only by the pattern's first subscribe (a pattern
   * already held would take a seeded position for a gap in its live messages).
   */
  need(pattern: string, since?: Record<string, Position>): Promise<SubscribeOutcome> {
    const existing = this.patterns.get(pattern);
    if (since && !existing) this.seedPositions(Object.entries(since));
    if (existing?.status === 'active') return Promise.resolve(existing.outcome);
    // Wanted again: the subscribe, sent after any unsubscribe still on its way, settles it.
    this.releasing.delete(pattern);
    return new Promise((resolve, reject) => {
      const state = existing ?? { status: 'wanted' as const, waiters: [], outcome: { recovered: undefined } };
      state.waiters.push({ resolve, reject });
      this.patterns.set(pattern, state);
      this.sendWanted();
    });
  }

  release(pattern: string): Promise<void> {
    const state = this.patterns.get(pattern);
    this.patterns.delete(pattern);
    this.releaseHeld();
    // Positions of channels no other pattern covers would make a later subscribe replay stale history.
    for (const channel of [...this.positions.keys()]) {
      if (![...this.patterns.keys()].some((p) => matches(p, channel))) this.positions.delete(channel);
    }
    if (!state || (state.status === 'wanted' && !state.sent)) return Promise.resolve();
    // The server holds it, or may (a subscribe on its way): it is told now, or once connected.
    this.releasing.set(pattern, 'due');
    if (this.session.state !== 'connected') return Promise.resolve();
    return new Promise((resolve) => this.unsubscribe(pattern, resolve));
  }

  /** Sends the unsubscribe of a released pattern; `settled` runs on its answer, or when none can come. */
  private unsubscribe(pattern: string, settled: () => void = () => {}): void {
    this.releasing.set(pattern, 'sent');
    this.outbox.enqueue('unsubscribe', { channel: '/meta/unsubscribe', subscription: pattern }, this.options.timeout, (reply) => {
      // Answered (even refused: the server holds nothing more to drop): done. Otherwise asked again once connected.
      if (!(reply instanceof ClientError)) this.releasing.delete(pattern);
      else if (this.releasing.has(pattern)) this.releasing.set(pattern, 'due');
      settled();
    });
  }

  /**
   * Sends the subscribes that are wanted or due a resync (once connected). `withHandshake`: a
   * bundled handshake is on its way, and they are queued to go in its frame (Outbox.sendWithHandshake).
   */
  sendWanted(withHandshake = false): void {
    if (this.session.state !== 'connected' && !withHandshake) return;
    for (const [pattern, step] of this.releasing) if (step === 'due') this.unsubscribe(pattern);
    for (const [pattern, state] of this.patterns) {
      const resync = state.status === 'active' && state.resync === 'due';
      if (state.status !== 'wanted' && !resync) continue;
      // A pattern asks again even when it knows no channel yet: the server recovers the channels
      // it sent it and it never received (a pattern names only those it received from).
      const recover = this.recoverFor(pattern) ?? (resync && isWildcard(pattern) ? {} : undefined);
      state.recover = recover;
      if (resync) {
        // Without positions (a server without history) there is nothing to ask for again.
        state.resync = recover ? 'sent' : undefined;
        if (!recover) continue;
      } else state.status = 'sending';
      state.sent = true;
      const message: Message = { channel: '/meta/subscribe', subscription: pattern, ...(recover ? { ext: { recover } } : {}) };
      const timeout = this.options.timeout;
      this.outbox.enqueue('subscribe', message, timeout, (reply) =>
        // A timeout error comes from the outbox: no reply in time.
        reply instanceof ClientError && reply.code === 'timeout' ? this.timedOut(pattern, timeout) : this.subscribed(pattern, reply, recover),
      );
    }
    this.dropping = false;
    this.releaseHeld();
  }

  /** `ext.recover` for a subscribe: the positions of the channels it covers (its own, or those seen through a wildcard). */
  private recoverFor(pattern: string): Record<string, Position> | undefined {
    const recover: Record<string, Position> = {};
    let any = false;
    for (const [channel, position] of this.positions) {
      if (channel === pattern || (isWildcard(pattern) && matches(pattern, channel))) {
        recover[channel] = position;
        any = true;
      }
    }
    return any ? recover : undefined;
  }

  private subscribed(pattern: string, reply: Message | ClientError, recover: Record<string, Position> | undefined): void {
    const state = this.patterns.get(pattern);
    if (!state) {
      // Released while the subscribe was on its way: release() left it to be unsubscribed.
      return;
    }
    if (reply instanceof ClientError) return this.failed(pattern, reply);
    if (reply.successful !== true && reply.advice?.reconnect === 'handshake') {
      // The session ended under the subscribe (it expired during a cut): not a refusal. A new
      // session subscribes everything again, recovering from the positions.
      state.status = 'wanted';
      state.resync = undefined;
      state.afterMove = undefined;
      this.releaseHeld();
      return this.session.retry('handshake', `server: ${reply.error ?? 'session unknown'}`);
    }
    if (reply.successful !== true) return this.failed(pattern, ClientError.fromReply(reply));
    const ext = (reply.ext ?? {}) as { recovered?: Record<string, unknown>; positions?: Record<string, unknown>; recoveryUnavailable?: unknown };
    if (recover && ext.recoveryUnavailable === true) return this.askAgainLater(pattern, state);
    state.askedAgain = undefined;
    const positions = ext.positions ?? {};
    let outcome: RecoveryOutcome | undefined;
    if (recover) {
      const channels: Record<string, boolean> = {};
      for (const channel of Object.keys(recover)) {
        // A server without history ignores ext.recover: nothing was replayed, and nothing can be promised.
        channels[channel] = ext.recovered?.[channel] === true;
        if (!channels[channel]) this.positions.delete(channel);
      }
      // On the same session the server also recovers, for a pattern, the channels it had sent it
      // that never arrived (named nowhere here): their outcome counts too.
      if (isWildcard(pattern) && state.resync === 'sent') {
        for (const [channel, value] of Object.entries(ext.recovered ?? {})) if (!(channel in channels) && matches(pattern, channel)) channels[channel] = value === true;
      }
      // A pattern on a new session names only the channels it had received from: a channel first
      // published on while it was away (on a node that died, say) is not among them, and what it
      // carried cannot be asked for. So a pattern's recovery is never promised whole then.
      const unknowable = isWildcard(pattern) && state.resync !== 'sent';
      outcome = { recovered: !unknowable && Object.values(channels).every(Boolean), channels };
    } else if (isWildcard(pattern) && state.wasActive === true && state.resync !== 'sent') {
      // The same for a pattern that had received nothing yet: it names no channel at all.
      outcome = { recovered: false, channels: {} };
    }
    for (const [channel, value] of Object.entries(positions)) {
      const position = asPosition(value);
      const known = this.positions.get(channel);
      // Only a channel with nothing seen (or a new epoch) starts from the reply: replays follow it.
      if (position && (!known || known.epoch !== position.epoch)) this.positions.set(channel, position);
    }
    const quiet = state.afterMove === true && outcome?.recovered === true;
    state.status = 'active';
    state.wasActive = true;
    state.resync = undefined;
    state.afterMove = undefined;
    state.recover = undefined;
    this.releaseHeld({ recovered: new Set(Object.keys(ext.recovered ?? {}).filter((channel) => ext.recovered?.[channel] === true)) });
    if (!quiet) state.outcome = { recovered: outcome?.recovered };
    for (const waiter of state.waiters.splice(0)) waiter.resolve(state.outcome);
    if (outcome && !quiet) this.events.recovery(pattern, outcome);
  }

  /**
   * The server holds the subscription but could not read its history just now (Redis out of its
   * reach): nothing was replayed, and nothing is lost yet. The positions stay; live messages past
   * a gap are dropped meanwhile (`recovering`), since the replay brings them in order; and the same
   * subscribe is sent again after a backoff with jitter (ASK_AGAIN_*), until the server can say.
   * Whoever awaits the subscription learns its outcome then.
   */
  private askAgainLater(pattern: string, state: PatternState): void {
    state.status = 'active';
    state.resync = 'later';
    state.askedAgain = (state.askedAgain ?? -1) + 1;
    const wait = backoff(state.askedAgain, ASK_AGAIN_FIRST_MS, ASK_AGAIN_MOST_MS, ASK_AGAIN_LEAST_MS);
    const timer = setTimeout(() => {
      if (this.patterns.get(pattern) !== state || state.resync !== 'later') return;
      state.resync = 'due';
      this.sendWanted();
    }, wait);
    // Not what keeps a Node process alive.
    (timer as { unref?: () => void }).unref?.();
  }

  /**
   * No reply to a subscribe in time. A first subscription fails (its caller learns it); one the
   * client is restoring (after a reconnection, nobody awaiting it) is not given up on a slow or
   * dying line: it is sent again, and a dead line is found by the connect's deadline meanwhile.
   */
  private timedOut(pattern: string, timeout: number): void {
    const state = this.patterns.get(pattern);
    if (state?.resync === 'sent' || (state && state.waiters.length === 0 && state.status === 'sending')) {
      if (state.resync === 'sent') state.resync = 'due';
      else state.status = 'wanted';
      return this.sendWanted();
    }
    this.failed(pattern, new ClientError('timeout', `no reply to the subscription within ${timeout} ms`));
  }

  private failed(pattern: string, error: ClientError): void {
    const state = this.patterns.get(pattern);
    if (!state) return;
    this.patterns.delete(pattern);
    this.releaseHeld();
    const waiters = state.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(error);
    if (waiters.length === 0) this.events.refused(pattern, error);
  }

  /** A message for the application, unless it was seen already or lies past a gap. */
  deliver(message: Message): void {
    if (this.dropping) return;
    const position = asPosition(message.ext?.position);
    if (position && !this.positions.has(message.channel) && this.resyncCovers(message.channel)) return this.hold(message);
    this.take(message, position);
  }

  private take(message: Message, position: Position | null): void {
    if (position) {
      const last = this.positions.get(message.channel);
      if (last && last.epoch === position.epoch) {
        // Already seen (a replay overlapping the live flow, or a resent batch): never twice.
        if (position.offset <= last.offset) return;
        if (position.offset > last.offset + 1) {
          // A recovery from the last position is on its way (a dead line swallowed messages):
          // its replay brings this one again, after those missing, in order.
          if (this.recovering(message.channel)) return;
          // The server dropped messages (a slow consumer's queue overflowed): start a new
          // session that asks for them from the last position, in order.
          return this.session.rehandshake(`gap on ${message.channel}: ${last.offset + 1}…${position.offset - 1} missing`);
        }
      } else if (last) {
        // A new epoch: the channel's history was lost on the server.
        this.positions.set(message.channel, position);
        for (const pattern of this.patterns.keys()) {
          if (matches(pattern, message.channel)) this.events.recovery(pattern, { recovered: false, channels: { [message.channel]: false } });
        }
      }
      this.positions.set(message.channel, position);
    }
    // A position the server tells of without its message (excluded from it): nothing to deliver.
    if (message.ext?.skip === true) return;
    this.events.deliver(message);
  }

  /** Whether a resync of a wildcard covering `channel` is due or on its way. */
  private resyncCovers(channel: string): boolean {
    for (const [pattern, state] of this.patterns) {
      if (state.status === 'active' && state.resync !== undefined && isWildcard(pattern) && matches(pattern, channel)) return true;
    }
    return false;
  }

  /**
   * Holds a message of a channel a wildcard reached but this client never received from, while a
   * resync of that wildcard is due or on its way. The server may have sent that channel's earlier
   * messages down the line that died: the resync replays them from the first it sent, and a
   * message taken now would be taken for the channel's start, dropping that replay as old (over
   * long-polling, what waited for the session is in the answer to its first connect, before the
   * resync subscribe has left). The subscribe's answer says where the replay starts (`release`).
   */
  private hold(message: Message): void {
    // A bound for a server that sends without end while the resync is answered late: past it,
    // messages are taken as they come, as without this hold.
    if (this.heldCount >= MAX_HELD) {
      this.releaseHeld({ all: true });
      return this.take(message, asPosition(message.ext?.position));
    }
    let messages = this.held.get(message.channel);
    if (!messages) this.held.set(message.channel, (messages = []));
    messages.push(message);
    this.heldCount++;
  }

  /**
   * Delivers what is held for channels no resync covers any more, each channel's messages in
   * order of position. Where the answer to a resync named the channel recovered (`recovered`),
   * its position is now where the replay starts: held messages at or before it are dropped,
   * those that follow it without a gap are delivered, and from the first gap on the replay brings
   * them (the server sent them before it replayed, or it would have sent the missing ones first).
   */
  private releaseHeld({ recovered, all = false }: { recovered?: ReadonlySet<string>; all?: boolean } = {}): void {
    if (this.heldCount === 0) return;
    for (const [channel, messages] of this.held) {
      if (!all && this.resyncCovers(channel)) continue;
      this.held.delete(channel);
      this.heldCount -= messages.length;
      if (this.dropping) continue;
      const inOrder = messages.map((message) => ({ message, position: asPosition(message.ext?.position)! }));
      inOrder.sort((a, b) => (a.position.epoch === b.position.epoch ? a.position.offset - b.position.offset : 0));
      for (const { message, position } of inOrder) {
        const last = this.positions.get(channel);
        if (recovered?.has(channel) && last?.epoch === position.epoch && position.offset > last.offset + 1) break;
        this.take(message, position);
      }
    }
  }

  /**
   * Whether a subscribe not yet answered will have the server replay `channel` from its last
   * position: one still to be sent (it will carry that position) or one sent with it.
   */
  private recovering(channel: string): boolean {
    for (const [pattern, state] of this.patterns) {
      if (pattern !== channel && !(isWildcard(pattern) && matches(pattern, channel))) continue;
      if (state.status === 'wanted' || state.resync === 'due' || state.resync === 'later') return true;
      if ((state.status === 'sending' || state.resync === 'sent') && state.recover?.[channel] !== undefined) return true;
    }
    return false;
  }

  /**
   * The line was lost. Whatever the server wrote to it and the client never read (frames on a
   * dying socket, a poll's answer cut in flight, a stream's last bytes) counts as delivered on
   * the server: the subscriptions ask for it again from their last positions once connected (a
   * new session re-subscribes everything anyway). `moved`: the session left the line for another
   * of its own accord, and a replay that recovers everything is not reported (see afterMove).
   */
  lineLost(cause: 'lost' | 'moved' = 'lost'): void {
    for (const state of this.patterns.values()) {
      if (state.status !== 'active') continue;
      // A line lost before a move's resync was answered makes it a recovery like any other.
      state.afterMove = cause === 'moved' && (state.resync === undefined || state.afterMove === true);
      state.resync = 'due';
    }
  }

  /** The subscribe for `pattern` was in flight on a line that died: it is sent again once connected. */
  unanswered(pattern: string): void {
    const state = this.patterns.get(pattern);
    if (state?.status === 'sending') state.status = 'wanted';
    else if (state?.resync === 'sent') state.resync = 'due';
  }

  /** A new session holds no subscription yet: every pattern is wanted again, and none is left to drop. */
  newSession(): void {
    this.releasing.clear();
    for (const state of this.patterns.values()) {
      state.status = 'wanted';
      state.resync = undefined;
      state.afterMove = undefined;
      state.sent = false;
    }
    this.releaseHeld();
  }

  /** The client stops: whoever awaits a subscription learns why; the patterns stay wanted. */
  stop(error: ClientError): void {
    // Not delivered: the application stopped the client.
    this.held.clear();
    this.heldCount = 0;
    for (const state of this.patterns.values()) {
      state.status = 'wanted';
      for (const waiter of state.waiters.splice(0)) waiter.reject(error);
    }
  }

  /**
   * Positions seen elsewhere (a tab taking over the shared connection seeds its new one with
   * what it was relayed), so that the first subscribes recover from them. Known channels keep theirs.
   */
  seedPositions(positions: Iterable<[string, Position]>): void {
    for (const [channel, position] of positions) if (!this.positions.has(channel)) this.positions.set(channel, position);
  }
}
