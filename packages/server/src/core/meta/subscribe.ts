/**
 * /meta/subscribe and /meta/unsubscribe (Bayeux §Subscribe, §Unsubscribe; BAYEUX.md A9–A10, A29–A30).
 *
 * - The request MUST contain channel, clientId and subscription (a channel, a pattern, or a list
 *   of them); the reply MUST contain channel, successful and subscription, echoed as sent.
 * - Clients do not subscribe to /meta channels: refused, and exact names only, so
 *   "/meta/subscribe/x" is refused too (Faye CVE-2020-11020).
 * - /service channels are never broadcast, and servers SHOULD NOT record subscriptions to them:
 *   such a subscribe succeeds without recording anything, as CometD's does (A10).
 * - A subscribe is checked whole before anything is subscribed: names, `maxSubscriptions` (and
 *   `maxSubscriptionsPerIp`, over every session of the address), the
 *   recovery request (`ext.recover`, recovery.ts), then the security policy (subscribe, and create
 *   when nobody subscribes yet) for each new channel.
 * - The reply's `ext.positions` gives each exact channel's current position (where a later
 *   recovery starts) and, for each channel recovered through a pattern, the position its replay
 *   follows; `ext.recovered` the outcome of each recovery asked for; the replayed
 *   messages are queued before anything published later (Perihelion's extension, docs/protocol.md).
 */
import { bayeuxError, channelProblem, isMeta, isService, isWildcard, matches, subscriptionList, type Message, type Position } from '@perihelion/protocol';
import type { RecoverRequest, SubscribeOutcome } from '../../engine/engine.js';
import { andThen, type MaybePromise } from '../../maybe-promise.js';
import { readRecoverRequests } from '../recovery.js';
import { checkAccess } from '../publish.js';
import { reply as replyTo, unknownClient, type Reply } from '../replies.js';
import type { ServerCore } from '../server.js';
import type { ServerSession } from '../session.js';

/**
 * Synchronous, making no promise, unless the policy or the engine answers with one (an
 * asynchronous `authorize` hook, Redis): every connection's set-up subscribes.
 */
export function subscribe(core: SubscribeCore, message: Message, session: ServerSession | null): MaybePromise<Reply> {
  if (!session) return unknownClient(message);
  const { options } = core;
  const reply = replyTo(message, false);
  if (message.subscription !== undefined) reply.subscription = message.subscription;
  const channels = subscriptionList(message.subscription);
  if (!channels) return { ...reply, error: bayeuxError('missingParameter', ['subscription'], 'a channel name or a non-empty list of them') };
  const fresh: string[] = [];
  /** Named again while already subscribed (a subscribe resent after its reply was lost): recovery still applies. */
  const again: string[] = [];
  // Names seen, for a long list: a scan of the lists for each name would take seconds for a
  // hostile list of 100 000 (the one-channel subscribe of every set-up makes no set).
  const seen = channels.length > 8 ? new Set<string>() : null;
  const room = options.maxSubscriptions - session.subscriptions.size;
  for (const channel of channels) {
    const problem = channelProblem(channel, { maxLength: options.maxChannelLength });
    if (problem) return { ...reply, error: bayeuxError('channelInvalid', [channel], problem) };
    // Bayeux §Meta Channels: clients do not subscribe to /meta. Exact channels only, so
    // "/meta/subscribe/x" is refused too (Faye CVE-2020-11020).
    if (isMeta(channel)) return { ...reply, error: bayeuxError('channelForbidden', [channel]) };
    // Service channels are never broadcast; old CometD apps subscribe before publishing, so
    // succeed without recording anything (BAYEUX.md A10).
    if (isService(channel) || (seen ? seen.has(channel) : fresh.includes(channel) || again.includes(channel))) continue;
    seen?.add(channel);
    if (session.subscriptions.has(channel)) again.push(channel);
    // Refused whole as soon as it is too many: the rest of a list that long need not be read.
    else if (fresh.push(channel) > room) return { ...reply, error: bayeuxError('tooManySubscriptions', [], `at most ${options.maxSubscriptions} per session`) };
  }
  // One address may not take more than its share of the server's memory, however many sessions it opens.
  const budget = options.maxSubscriptionsPerIp;
  if (budget > 0 && fresh.length > 0 && core.delivery.subscriptionsFrom(session.remoteAddress ?? 'unknown') + fresh.length > budget) {
    return { ...reply, error: bayeuxError('tooManySubscriptions', [], `at most ${budget} subscriptions per address`) };
  }
  // Counted per channel subscribed anew: naming again what it holds (a resync after a lost line) costs nothing.
  const limited = rateLimited(options, session, fresh.length);
  if (limited) return { ...reply, error: limited };
  // Usually a first subscribe: nothing named again, and no list is copied.
  const named = again.length === 0 ? fresh : [...fresh, ...again];
  const recover = readRecoverRequests(message.ext?.recover, named, { maxEntries: options.maxSubscriptions, maxChannelLength: options.maxChannelLength });
  if (!recover.ok) return { ...reply, error: recover.error };
  // A resync asking for recovery (its patterns named again): also what never reached it.
  const byPattern = again.length > 0 && message.ext?.recover !== undefined ? withUnnamedChannels(session, again, recover.byPattern) : recover.byPattern;
  return new SubscribeStep(core, message, session, reply, fresh, named, byPattern).checkFrom(0);
}

/**
 * `byPattern` with, for each pattern of `again`, the channels it reached on this session that the
 * client names nowhere in its `ext.recover`: a client names every channel it received from, so
 * it received nothing from these (their messages went down a line that died), and they are
 * recovered from the first position this session was sent there.
 */
function withUnnamedChannels(session: ServerSession, again: readonly string[], byPattern: ReadonlyMap<string, RecoverRequest[]>): ReadonlyMap<string, RecoverRequest[]> {
  const first = session.firstSentThroughPattern;
  if (first === null) return byPattern;
  const named = new Set<string>();
  for (const requests of byPattern.values()) for (const { channel } of requests) named.add(channel);
  let out: Map<string, RecoverRequest[]> | null = null;
  for (const pattern of again) {
    if (!isWildcard(pattern)) continue;
    for (const [channel, position] of first) {
      if (named.has(channel) || !matches(pattern, channel)) continue;
      named.add(channel);
      out ??= new Map([...byPattern].map(([key, requests]) => [key, [...requests]]));
      let list = out.get(pattern);
      if (!list) out.set(pattern, (list = []));
      // `since` is the last position seen: the one before the first it was sent.
      list.push({ channel, since: { epoch: position.epoch, offset: position.offset - 1 } });
    }
  }
  return out ?? byPattern;
}

type SubscribeCore = Pick<ServerCore, 'options' | 'security' | 'engine' | 'events' | 'delivery'>;

/** A subscribe past its first checks: the policy asked of each new channel, then the engine. */
class SubscribeStep {
  /** Positions of the exact channels (where a later recovery can start from). */
  private positions: Record<string, Position> | undefined;
  /** The outcome of each recovery asked for. */
  private recovered: Record<string, boolean> | undefined;
  /** The engine could not read the history for a recovery now: the client may ask again (`ext.recoveryUnavailable`). */
  private recoveryUnavailable = false;
  private replayBudget: number;

  constructor(
    private readonly core: SubscribeCore,
    private readonly message: Message,
    private readonly session: ServerSession,
    private readonly reply: Reply,
    /** The channels it does not hold yet. */
    private readonly fresh: readonly string[],
    /** Those and the ones named again. */
    private readonly named: readonly string[],
    private readonly recover: ReadonlyMap<string, RecoverRequest[]>,
  ) {
    this.replayBudget = core.options.maxReplay;
  }

  /** Asks the policy about each new channel from the `i`th on, then subscribes. */
  checkFrom(i: number): MaybePromise<Reply> {
    for (; i < this.fresh.length; i++) {
      const channel = this.fresh[i]!;
      const refused = checkAccess(this.core, 'subscribe', channel, this.session, this.message);
      if (refused instanceof Promise) {
        const next = i + 1;
        return refused.then((settled) => (settled ? this.forbidden(channel, settled) : this.checkFrom(next)));
      }
      if (refused) return this.forbidden(channel, refused);
    }
    return this.subscribeFrom(0);
  }

  private forbidden(channel: string, refused: string): Reply {
    return { ...this.reply, error: bayeuxError('channelForbidden', [channel], refused) };
  }

  /**
   * Subscribes the channels from the `j`th on; replayed messages are queued before anything
   * published later.
   */
  private subscribeFrom(j: number): MaybePromise<Reply> {
    const { core, session } = this;
    for (; j < this.named.length; j++) {
      // The session ended while this subscribe was checked (an asynchronous authorize hook, a
      // call-out, Redis): subscribing now would leave subscriptions, a presence join and the
      // address's count behind that nothing removes any more.
      if (session.ended) return unknownClient(this.message);
      const channel = this.named[j]!;
      const isNew = !session.subscriptions.has(channel);
      // Subscribing again is a no-op for the engine except for the recovery it carries.
      if (!isNew && !this.recover.has(channel)) continue;
      if (isNew) {
        session.subscriptions.add(channel);
        core.delivery.subscribed(session, 1);
      }
      const outcome = core.engine.subscribe(session.id, channel, this.recover.get(channel), this.replayBudget);
      if (outcome instanceof Promise) {
        const next = j + 1;
        return outcome.then((settled) => this.subscribed(channel, isNew, settled) ?? this.subscribeFrom(next));
      }
      const ended = this.subscribed(channel, isNew, outcome);
      if (ended) return ended;
    }
    this.reply.successful = true;
    if (this.positions || this.recovered) {
      const ext: Record<string, unknown> = { ...this.reply.ext };
      if (this.positions) ext.positions = this.positions;
      if (this.recovered) ext.recovered = this.recovered;
      if (this.recoveryUnavailable) ext.recoveryUnavailable = true;
      this.reply.ext = ext;
    }
    return this.reply;
  }

  /** Whether the client's `ext.recover` names `channel` (it knows its position then). */
  private namedByClient(channel: string): boolean {
    const asked = this.message.ext?.recover;
    return typeof asked === 'object' && asked !== null && Object.hasOwn(asked, channel);
  }

  /** Takes the engine's outcome for `channel`; answers the reply when the session ended meanwhile, else null. */
  private subscribed(channel: string, isNew: boolean, outcome: SubscribeOutcome): MaybePromise<Reply> | null {
    const { core, session } = this;
    if (session.ended) {
      // Ended while the engine subscribed it (Redis, or a replay that overflowed its queue): the
      // removal may have run first.
      return andThen(core.engine.removeSession(session.id), () => unknownClient(this.message));
    }
    if (outcome.position) (this.positions ??= {})[channel] = outcome.position;
    const requests = isWildcard(channel) && outcome.recovered.length > 0 ? this.recover.get(channel) : undefined;
    const since = requests ? new Map(requests.map((request) => [request.channel, request.since])) : undefined;
    if (outcome.unavailable) this.recoveryUnavailable = true;
    for (const result of outcome.recovered) {
      (this.recovered ??= {})[result.channel] = result.recovered;
      this.replayBudget -= result.replayed;
      // A channel recovered through a pattern: where its replay starts. A client that has
      // received nothing there yet (its messages went down a line that died) learns from it that
      // the replay follows, and that a message of that channel it has meanwhile received live
      // belongs to that replay (the client's subscriptions.ts).
      const start = result.recovered && !this.namedByClient(result.channel) ? since?.get(result.channel) : undefined;
      if (start) (this.positions ??= {})[result.channel] ??= start;
    }
    if (isNew) core.events.emit('subscribe', session, channel);
    return null;
  }
}

export async function unsubscribe(core: Pick<ServerCore, 'options' | 'engine' | 'events' | 'delivery'>, message: Message, session: ServerSession | null): Promise<Reply> {
  if (!session) return unknownClient(message);
  const reply = replyTo(message, false);
  if (message.subscription !== undefined) reply.subscription = message.subscription;
  const channels = subscriptionList(message.subscription);
  if (!channels) return { ...reply, error: bayeuxError('missingParameter', ['subscription'], 'a channel name or a non-empty list of them') };
  let held = 0;
  for (const channel of channels) {
    const problem = channelProblem(channel, { maxLength: core.options.maxChannelLength });
    if (problem) return { ...reply, error: bayeuxError('channelInvalid', [channel], problem) };
    if (isMeta(channel)) return { ...reply, error: bayeuxError('channelForbidden', [channel]) };
    if (session.subscriptions.has(channel)) held++;
  }
  // Counted per channel it holds (a name listed twice counts twice, at most maxSubscriptions in all).
  const limited = rateLimited(core.options, session, held);
  if (limited) return { ...reply, error: limited };
  for (const channel of channels) {
    if (!session.subscriptions.delete(channel)) continue;
    core.delivery.subscribed(session, -1);
    await core.engine.unsubscribe(session.id, channel);
    core.events.emit('unsubscribe', session, channel);
  }
  return { ...reply, successful: true };
}

/**
 * The error for subscribing to or unsubscribing from `channels` channels past the session's
 * `subscribeRate` (its burst spent), or null; refused whole, as the other checks refuse. Each costs
 * the engine's work and a presence event, and a client that churns subscriptions would
 * otherwise cost CPU without bound (memory is bounded by maxSubscriptions).
 */
function rateLimited(options: Pick<ServerCore['options'], 'subscribeRate'>, session: ServerSession, channels: number): string | null {
  if (channels === 0 || session.subscribeBucket === null || session.subscribeBucket.takeSome(channels)) return null;
  return bayeuxError('rateLimited', [], `more than ${options.subscribeRate} channels subscribed or unsubscribed per second`);
}
