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
 *   recovery starts), and `ext.recovered` the outcome of each recovery asked for; the replayed
 *   messages are queued before anything published later (Perihelion's extension, docs/protocol.md).
 */
import { bayeuxError, channelProblem, isMeta, isService, subscriptionList, type Message, type Position } from '@perihelion/protocol';
import { readRecoverRequests } from '../recovery.js';
import { checkCreate } from '../publish.js';
import { reply as replyTo, unknownClient, type Reply } from '../replies.js';
import type { ServerCore } from '../server.js';
import type { ServerSession } from '../session.js';

export async function subscribe(core: Pick<ServerCore, 'options' | 'security' | 'engine' | 'events' | 'delivery'>, message: Message, session: ServerSession | null): Promise<Reply> {
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
  for (const channel of fresh) {
    const refused = (await core.security.policy.check('subscribe', channel, session, message)) ?? (await checkCreate(core, channel, session, message));
    if (refused) return { ...reply, error: bayeuxError('channelForbidden', [channel], refused) };
  }
  // Positions of the exact channels (where a later recovery can start from) and the outcome of
  // each recovery asked for; replayed messages are queued before anything published later.
  let positions: Record<string, Position> | undefined;
  let recovered: Record<string, boolean> | undefined;
  let replayBudget = options.maxReplay;
  for (const channel of named) {
    // The session ended while this subscribe was checked (an asynchronous authorize hook, a
    // call-out, Redis): subscribing now would leave subscriptions, a presence join and the
    // address's count behind that nothing removes any more.
    if (session.ended) return unknownClient(message);
    const isNew = !session.subscriptions.has(channel);
    // Subscribing again is a no-op for the engine except for the recovery it carries.
    if (!isNew && !recover.byPattern.has(channel)) continue;
    if (isNew) {
      session.subscriptions.add(channel);
      core.delivery.subscribed(session, 1);
    }
    const outcome = await core.engine.subscribe(session.id, channel, recover.byPattern.get(channel), replayBudget);
    if (session.ended) {
      // Ended while the engine subscribed it (Redis): the removal may have run first.
      await core.engine.removeSession(session.id);
      return unknownClient(message);
    }
    if (outcome.position) (positions ??= {})[channel] = outcome.position;
    for (const result of outcome.recovered) {
      (recovered ??= {})[result.channel] = result.recovered;
      replayBudget -= result.replayed;
    }
    if (isNew) core.events.emit('subscribe', session, channel);
  }
  reply.successful = true;
  if (positions || recovered) {
    const ext: Record<string, unknown> = {};
    if (positions) ext.positions = positions;
    if (recovered) ext.recovered = recovered;
    reply.ext = ext;
  }
  return reply;
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
