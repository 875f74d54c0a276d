/**
 * Presence: who is in a channel, and join and leave events as that changes (issue #15).
 *
 * - A session is a member of channel C when it subscribes to exactly C (a wildcard subscriber
 *   only watches). Only broadcast channels have members: not /meta, /service nor /presence.
 * - A member is a user (`presenceBy: "user"`, all of its sessions, tabs and devices, are one
 *   member; an anonymous session is a member of its own) or a session (`presenceBy: "session"`).
 * - The server publishes `{action: "join" | "leave", clientId, user}` on `/presence` + C (an
 *   ordinary server broadcast: every node's subscribers and in-process listeners see it) when a
 *   member's first session subscribes and when its last one goes (unsubscribe or end of session).
 * - No flapping: a leave waits `presenceGrace` ms. Its mark is kept in the engine
 *   (`markLeaving`), so a member coming back within the grace on any node (a page reload: same
 *   user, new session) takes it (`takeLeaving`), and neither the leave nor the join is published.
 *   The node that held the leave publishes it when the grace ends, if the mark is still there.
 * - `/service/presence`: a client sends `{channel}` and is answered `{channel, members}`, when it
 *   may subscribe to that channel (the subscribe check of the security policy).
 *
 * Each node counts its own sessions of each (channel, member) as the events come, and runs the
 * steps of one (channel, member) one after the other, so a quick unsubscribe and subscribe, or
 * two tabs subscribing at once, are judged in order. A user's sessions on other nodes are looked
 * up in the engine (`sessionsOfUser`, then `subscribers`) only when it has some there. Two
 * sessions of one user joining on two nodes in the same instant may each see the other (no join)
 * or neither (two joins): the engine keeps no count of members.
 */
import { bayeuxError, channelProblem, isMeta, isService, isWildcard, type Message } from '@perihelion/protocol';
import type { Engine, LostSession } from '../engine/engine.js';
import { PerihelionError } from '../errors.js';
import type { MaybePromise } from '../maybe-promise.js';
import { broadcastNow, ServiceRefusal } from './publish.js';
import type { ServerCore } from './server.js';
import type { Session } from './session.js';

/** Presence events of channel C are published on PRESENCE_PREFIX + C. */
export const PRESENCE_PREFIX = '/presence';
/** Where clients ask who is in a channel. */
export const PRESENCE_SERVICE = '/service/presence';
/** How much longer than its grace a mark is kept, so that it is still there when the grace ends. */
const MARK_MARGIN_MS = 30_000;
/** How long an ended session of this node is not taken for another node's (its removal from the engine is on its way). */
const GONE_MS = 60_000;
/** How soon an event the engine failed to take (Redis went away with it in flight) is published again, ms. */
const REPUBLISH_MS = 250;
/** Events kept while the engine is away, to publish again everywhere once it is back (the oldest go first past it). */
const MAX_UNSHARED = 10_000;
/**
 * How long after this node finds Redis back it publishes those events, ms: the other nodes find it
 * back within their reconnect backoff of this one (the Redis engine tries at least every 2 s), and
 * an event published before would reach only those already back.
 */
const SHARE_AFTER_OUTAGE_MS = 3_000;

export type PresenceBy = 'user' | 'session';

/** One member of a channel: one of its sessions, and its user (null: anonymous). */
export interface Member {
  clientId: string;
  user: string | null;
}

/** The data of a presence event. */
export interface PresenceEvent extends Member {
  action: 'join' | 'leave';
}

/** The channel where the presence events of `channel` are published. */
export function presenceChannel(channel: string): string {
  return PRESENCE_PREFIX + channel;
}

/** For a channel or pattern under /presence/, the channel or pattern whose presence it carries; else null. */
export function watchedChannel(channel: string): string | null {
  return channel.startsWith(`${PRESENCE_PREFIX}/`) ? channel.slice(PRESENCE_PREFIX.length) : null;
}

/** Whether the sessions subscribed to exactly `channel` are its members: broadcast channels only. */
export function hasPresence(channel: string): boolean {
  return !isWildcard(channel) && !isMeta(channel) && !isService(channel) && channel !== PRESENCE_PREFIX && watchedChannel(channel) === null;
}

/** One (channel, member): the key of its steps, held leave and local sessions. */
function pairId(channel: string, member: { key: string }): string {
  return JSON.stringify([channel, member.key]);
}

/** The members of `channel`, on every node: per user (one of its sessions) or per session. */
export async function membersOf(engine: Engine, channel: string, by: PresenceBy): Promise<Member[]> {
  const clientIds = await engine.subscribers(channel);
  const users = clientIds.length > 0 ? await engine.usersOf(clientIds) : [];
  const seen = new Set<string>();
  const members: Member[] = [];
  clientIds.forEach((clientId, i) => {
    const user = users[i] ?? null;
    if (by === 'user' && user !== null) {
      if (seen.has(user)) return;
      seen.add(user);
    }
    members.push({ clientId, user });
  });
  return members;
}

/** A member as the engine's grace marks name it: "user:<id>" or "session:<clientId>". */
interface MemberKey {
  key: string;
  user: string | null;
}

/** A member that stands for all of a user's sessions (else it is one session). */
function isUser(member: MemberKey): boolean {
  return member.key.startsWith('user:');
}

type PresenceCore = Pick<ServerCore, 'options' | 'engine' | 'events' | 'listeners' | 'security' | 'extensions' | 'delivery' | 'reportError'>;

export class Presence {
  /**
   * The channels each session of this node is a member of (a session's own set is cleared before
   * 'disconnect'): the channel itself while there is one, the usual case, else a set.
   */
  private readonly joined = new Map<string, string | Set<string>>();
  /**
   * This node's sessions of each (channel, user member), as the events left them, in their order.
   * A member that is a session needs no set: it is in while that session is `joined`.
   */
  private readonly local = new Map<string, Set<string>>();
  /** Sessions of this node that ended lately, by when: with Redis the engine may list them a moment longer. */
  private readonly gone = new Map<string, number>();
  /** Leaves waiting for their grace to end, by (channel, member). */
  private readonly held = new Map<string, NodeJS.Timeout>();
  /** The steps of each (channel, member), chained so that they run in order. */
  private readonly steps = new Map<string, Promise<void>>();
  private closing = false;
  /**
   * The events published while the engine was away (Redis unreachable: they reached this node's
   * sessions only), in order, to publish again once it is back, so that the watchers on the other
   * nodes learn who came and went meanwhile. At most MAX_UNSHARED.
   */
  private unshared: Array<{ channel: string; event: PresenceEvent }> = [];
  /** Ends the waits before `unshared` events are published (at close). */
  private readonly settling = new Set<() => void>();

  constructor(private readonly core: PresenceCore) {
    core.events.on('subscribe', (session, channel) => {
      if (!hasPresence(channel)) return;
      this.markJoined(session.id, channel);
      const member = this.memberOf(session);
      const id = pairId(channel, member);
      if (isUser(member)) {
        let sessions = this.local.get(id);
        if (!sessions) this.local.set(id, (sessions = new Set()));
        sessions.add(session.id);
        // Another session of the user was here first: it is in already.
        if (sessions.size > 1) return;
      } else if (!this.steps.has(id) && !this.held.has(id)) {
        // A session that is a member of its own, with no step of its own under way and no
        // leave held here, has no grace mark anywhere (only the node that holds a session marks
        // its leaves, and this one holds none) and no session elsewhere: its join goes out at
        // once, without asking the engine. Most subscribes are this one.
        // Published at once unless something had to wait (an extension, Redis): only then is
        // there a step to track.
        try {
          const published = this.publish(channel, { action: 'join', clientId: session.id, user: member.user });
          if (published instanceof Promise) this.track(id, published);
        } catch (error) {
          this.core.reportError(error);
        }
        return;
      }
      this.run(id, () => this.join(channel, member, session.id));
    });
    core.events.on('unsubscribe', (session, channel) => {
      if (this.unmarkJoined(session.id, channel)) this.left(channel, this.memberOf(session), session.id, false);
    });
    core.events.on('disconnect', (session) => {
      if (session.identity !== null) {
        this.forgetGone(Date.now());
        this.gone.set(session.id, Date.now());
      }
      const channels = this.joined.get(session.id);
      if (channels === undefined) return;
      this.joined.delete(session.id);
      const member = this.memberOf(session);
      for (const channel of typeof channels === 'string' ? [channels] : channels) this.left(channel, member, session.id, true);
    });
    core.listeners.add(PRESENCE_SERVICE, (message, session) => this.answer(message, session));
  }

  /**
   * Sessions another node held, removed with that node when it died (the engine says so to the
   * one node that removed them): their leaves, as for sessions that ended here. Without this, a
   * member of a node that crashed would never be seen to leave.
   */
  sessionsLost(sessions: readonly LostSession[]): void {
    for (const { clientId, user, subscriptions } of sessions) {
      const member: MemberKey = this.core.options.presenceBy === 'user' && user !== null ? { key: `user:${user}`, user } : { key: `session:${clientId}`, user };
      for (const channel of subscriptions) if (hasPresence(channel)) this.left(channel, member, clientId, true);
    }
  }

  /**
   * This node's sessions were taken for dead by another node, which published their leaves, and
   * are registered again: each member of this node is said to join again (a user member once).
   */
  sessionsRestored(): void {
    const said = new Set<string>();
    for (const [clientId, channels] of this.joined) {
      const session = this.core.delivery.sessions.get(clientId);
      if (!session) continue;
      const member = this.memberOf(session);
      for (const channel of typeof channels === 'string' ? [channels] : channels) {
        const id = pairId(channel, member);
        if (said.has(id)) continue;
        said.add(id);
        this.run(id, () => this.publish(channel, { action: 'join', clientId, user: member.user }));
      }
    }
  }

  /**
   * The engine is whole again after an outage: the events this node published meanwhile, which
   * only its own sessions got, are published again for the other nodes' (not for this node's
   * sessions and listeners, which had them: its watchers that track positions get only their
   * positions), each after the steps of its (channel, member) under way and before any later one.
   */
  shareAfterOutage(): void {
    const events = this.unshared;
    this.unshared = [];
    if (events.length === 0 || this.closing) return;
    const settled = new Promise<void>((resolve) => {
      const end = (): void => {
        clearTimeout(timer);
        this.settling.delete(end);
        resolve();
      };
      const timer = setTimeout(end, SHARE_AFTER_OUTAGE_MS);
      this.settling.add(end);
    });
    for (const { channel, event } of events) {
      const member = this.core.options.presenceBy === 'user' && event.user !== null ? { key: `user:${event.user}` } : { key: `session:${event.clientId}` };
      this.run(pairId(channel, member), async () => {
        await settled;
        if (!this.closing) await this.send(channel, event, true);
      });
    }
  }

  /** Waits for the steps under way (the engine must still be there for them), then drops the held leaves. */
  async close(): Promise<void> {
    this.closing = true;
    for (const end of [...this.settling]) end();
    while (this.steps.size > 0) await Promise.all(this.steps.values());
    for (const timer of this.held.values()) clearTimeout(timer);
    this.held.clear();
  }

  private memberOf(session: Session): MemberKey {
    const user = session.identity?.id ?? null;
    return this.core.options.presenceBy === 'user' && user !== null ? { key: `user:${user}`, user } : { key: `session:${session.id}`, user };
  }

  /** Runs `step` after the earlier steps of the same (channel, member); a failure is reported. */
  private run(id: string, step: () => MaybePromise<unknown>): void {
    this.track(id, (this.steps.get(id) ?? Promise.resolve()).then(step));
  }

  /** Keeps `step` as the latest of its (channel, member) until it is over; a failure is reported. */
  private track(id: string, step: Promise<unknown>): void {
    const next: Promise<void> = step
      .catch((error: unknown) => this.core.reportError(error))
      .then(() => {
        if (this.steps.get(id) === next) this.steps.delete(id);
      });
    this.steps.set(id, next);
  }

  /** The first session of `member` on this node subscribed to `channel`. */
  private async join(channel: string, member: MemberKey, clientId: string): Promise<void> {
    if (await this.core.engine.takeLeaving(channel, member.key)) {
      // Back within the grace (a reload, another node): it never left.
      this.release(pairId(channel, member));
      return;
    }
    if (await this.elsewhere(channel, member)) return;
    await this.publish(channel, { action: 'join', clientId, user: member.user });
  }

  /** A session of `member` left `channel`: it unsubscribed, or it `ended`. */
  private left(channel: string, member: MemberKey, clientId: string, ended: boolean): void {
    const id = pairId(channel, member);
    if (isUser(member)) {
      const sessions = this.local.get(id);
      sessions?.delete(clientId);
      // Another session of the user on this node stays.
      if (sessions && sessions.size > 0) return;
      this.local.delete(id);
    }
    this.run(id, async () => {
      if (await this.elsewhere(channel, member)) return;
      const grace = this.core.options.presenceGrace;
      // A member that is a session cannot come back once the session has ended: no grace.
      if (grace === 0 || (ended && member.key.startsWith('session:'))) return this.publish(channel, { action: 'leave', clientId, user: member.user });
      const token = await this.core.engine.markLeaving(channel, member.key, grace + MARK_MARGIN_MS);
      this.release(id);
      // Shutting down: the mark stays, so the member coming back on another node is no news.
      if (this.closing) return;
      const timer = setTimeout(() => {
        if (this.held.get(id) === timer) this.held.delete(id);
        this.run(id, () => this.graceOver(channel, member, clientId, token));
      }, grace);
      timer.unref();
      this.held.set(id, timer);
    });
  }

  /** The grace of a held leave has ended: published unless the member came back (the mark taken, on any node). */
  private async graceOver(channel: string, member: MemberKey, clientId: string, token: string): Promise<void> {
    // Its own mark only: a newer one (the member came back elsewhere and left again) has its own timer.
    if (!(await this.core.engine.takeLeaving(channel, member.key, token))) return;
    if (this.isHere(channel, member, clientId) || (await this.elsewhere(channel, member))) return;
    await this.publish(channel, { action: 'leave', clientId, user: member.user });
  }

  /** Whether `member` (whose session `clientId` left) is in `channel` on this node again. */
  private isHere(channel: string, member: MemberKey, clientId: string): boolean {
    if (isUser(member)) return this.local.has(pairId(channel, member));
    const channels = this.joined.get(clientId);
    return channels === channel || (typeof channels === 'object' && channels.has(channel));
  }

  /** Records that session `clientId` is a member of `channel`. */
  private markJoined(clientId: string, channel: string): void {
    const channels = this.joined.get(clientId);
    if (channels === undefined) this.joined.set(clientId, channel);
    else if (typeof channels === 'string') {
      if (channels !== channel) this.joined.set(clientId, new Set([channels, channel]));
    } else channels.add(channel);
  }

  /** Forgets that session `clientId` is a member of `channel`; false when it was not. */
  private unmarkJoined(clientId: string, channel: string): boolean {
    const channels = this.joined.get(clientId);
    if (channels === channel) return this.joined.delete(clientId);
    if (typeof channels !== 'object' || !channels.delete(channel)) return false;
    if (channels.size === 0) this.joined.delete(clientId);
    return true;
  }

  /** Drops this node's held leave of a (channel, member), if any. */
  private release(id: string): void {
    const timer = this.held.get(id);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.held.delete(id);
  }

  /**
   * Whether a session of `member` on another node subscribes to `channel` (this node's are in
   * `local`). A session is a member of its own only on the node that holds it; a user's sessions
   * elsewhere are looked up only when it has some.
   */
  private async elsewhere(channel: string, member: MemberKey): Promise<boolean> {
    if (member.user === null || !isUser(member)) return false;
    const { engine, delivery } = this.core;
    const remote = (await engine.sessionsOfUser(member.user)).filter((id) => !delivery.sessions.has(id) && !this.gone.has(id));
    if (remote.length === 0) return false;
    return (await engine.subscribedAmong(channel, remote)).length > 0;
  }

  /** Forgets the ended sessions that the engine no longer lists by now. */
  private forgetGone(now: number): void {
    for (const [id, at] of this.gone) {
      if (now - at < GONE_MS) break;
      this.gone.delete(id);
    }
  }

  private publish(channel: string, event: PresenceEvent): MaybePromise<boolean> {
    const published = this.send(channel, event);
    if (!(published instanceof Promise)) return published;
    // An application's publish that fails so is its caller's to retry; the server is the caller
    // of this one, and an event nobody gets leaves every view of the channel wrong until the
    // member's next change. Published again once: by then the node knows Redis is away, and its
    // own sessions get it (or Redis is back, and everyone does).
    return published.catch(async (error: unknown) => {
      if (!(error instanceof PerihelionError) || error.code !== 'ERR_ENGINE_UNAVAILABLE' || this.closing) throw error;
      this.core.reportError(error);
      await new Promise((resolve) => setTimeout(resolve, REPUBLISH_MS));
      return this.send(channel, event);
    });
  }

  /**
   * Publishes an event (`again`: after an outage, for the other nodes only); kept to publish again
   * after the outage if the engine is away (see `unshared`). False, and not published, when
   * nothing could ever see it: nobody watches the channel, no watcher was ever given a position of
   * it to recover from, and no in-process listener or 'publish' listener hears broadcasts (most
   * subscribes, on a server whose application asks no presence of that channel: the join would
   * cost a serialisation and a place in history for nothing). Its history then starts with the
   * first watcher.
   */
  private send(channel: string, event: PresenceEvent, again = false): MaybePromise<boolean> {
    const watched = presenceChannel(channel);
    const { engine, listeners, events } = this.core;
    if (engine.unseen?.(watched) === true && !listeners.hearsBroadcasts && events.listenerCount('publish') === 0) return false;
    if (engine.away?.() != null) {
      if (this.unshared.length >= MAX_UNSHARED) this.unshared.shift();
      this.unshared.push({ channel, event });
    }
    return broadcastNow(this.core, { channel: watched, data: event }, again ? { elsewhere: true } : {});
  }

  /** `/service/presence`: `{channel}` is answered `{channel, members}`, when the caller may subscribe to it. */
  private async answer(message: Message, session: Session | null): Promise<unknown> {
    // Only a session asks (a server-side publish on the service is nobody's request).
    if (!session) return undefined;
    const data = message.data;
    const channel = typeof data === 'object' && data !== null ? (data as { channel?: unknown }).channel : undefined;
    if (channel === undefined) return new ServiceRefusal(bayeuxError('missingParameter', ['channel'], 'send {"channel": "/a/channel"}'));
    const problem = channelProblem(channel, { maxLength: this.core.options.maxChannelLength });
    if (problem) return new ServiceRefusal(bayeuxError('channelInvalid', [String(channel)], problem));
    const name = channel as string;
    if (isWildcard(name)) return new ServiceRefusal(bayeuxError('channelInvalid', [name], 'presence is kept per channel, not for a wildcard pattern'));
    if (!hasPresence(name)) return new ServiceRefusal(bayeuxError('channelInvalid', [name], 'meta, service and presence channels have no members'));
    const refused = await this.core.security.policy.check('subscribe', name, session, message);
    if (refused) return new ServiceRefusal(bayeuxError('channelForbidden', [name], refused));
    return { channel: name, members: await membersOf(this.core.engine, name, this.core.options.presenceBy) };
  }
}
