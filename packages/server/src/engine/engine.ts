/**
 * The engine: where subscriptions live and how a publish reaches every node's sessions.
 *
 * The memory engine (default) keeps everything in this process. A cluster engine (Redis) keeps a
 * local index for the sessions connected to this node and carries each publish between nodes
 * once, as the already-serialised payload. The server core never touches the subscription index
 * directly, so engines can be swapped without changing it.
 *
 * History is the engine's too: on publish the engine gives a broadcast message its position
 * (epoch + offset) in its channel's bounded history, adds it to the already-serialised bytes
 * (`addToExt`, no second serialisation) and keeps those bytes for recovery.
 */
import type { Message, Position, Serialised } from '@perihelion/protocol';
import type { MaybePromise } from '../maybe-promise.js';
import type { HistoryPage, HistoryQuery, HistorySettings } from './history.js';

/** A message on its way to subscribers: the object for in-process listeners, the bytes for sessions. */
export interface Publication {
  channel: string;
  message: Message;
  /** The message serialised once per publish (`ext` last), shared by every recipient. */
  payload: string;
  /** How `payload` holds `ext`, so that the engine can add the position without serialising again. */
  ext: Serialised['ext'];
  /** Set by the engine on publish when the channel keeps history. */
  position?: Position;
  /** A session this broadcast is not delivered to: its publisher, which asked for no echo (`ext.echo: false`). */
  exclude?: string;
  /**
   * For the other nodes only: this node's sessions and in-process listeners had the message
   * already (presence events published again after an engine outage, which reached only them
   * then). Here a session that tracks positions is sent the position alone, as an excluded one is.
   */
  elsewhere?: true;
  /** A client's publish, which that client may send again: see PublishOnce. */
  once?: PublishOnce;
}

/**
 * What makes a publish recognisable when its publisher sends it again (at-least-once on the wire,
 * once to subscribers): a client's, after a line was lost before the reply came, on a new
 * session, perhaps through another node or worker; a backend's, retrying a call of the HTTP API
 * (or of `server.publish`) with the same idempotency key, perhaps on another node. An engine keeps
 * the latest `keep` ids of each publisher, each for `forMs` ms, on every node. A client's are left
 * by the memory engine to its one server, which keeps the same ids itself (recent-ids.ts).
 */
export interface PublishOnce {
  /** The publisher: a client's instance (`ext.instance` of its handshake, with its user, joined by a NUL), API_PUBLISHER, API_DELIVERER or CLIENT_KEYS. */
  client: string;
  /** The message's `id`, or the idempotency key. */
  id: string;
  /** How many of the publisher's latest ids are kept. */
  keep: number;
  /** How long each is kept, ms. */
  forMs: number;
}

/** The publisher of the idempotency keys of `server.publish` and `/api/publish` (no client instance has this form: theirs hold a NUL). */
export const API_PUBLISHER = 'api';
/** The same for the deliveries of `server.deliver` and `/api/deliver`: their keys are apart from the publishes'. */
export const API_DELIVERER = 'api-deliver';
/**
 * The publisher of the idempotency keys clients choose (`ext.idempotencyKey` of a publish), all
 * users' in one bounded set like the API's: each id is the user's id and the key, joined by a NUL,
 * so that one user's keys never match another's.
 */
export const CLIENT_KEYS = 'client-keys';

/**
 * Whether `once` is an idempotency key (the API's or a client's), which only the engine's shared
 * store can recognise: published without it, a retry once it is back would be published again.
 */
export function isIdempotencyKeyed(once: PublishOnce | undefined): once is PublishOnce {
  return once !== undefined && (once.client === API_PUBLISHER || once.client === CLIENT_KEYS);
}

/** A client asking to be given what it missed on `channel` since `since`. */
export interface RecoverRequest {
  channel: string;
  since: Position;
}

export interface SubscribeOutcome {
  /** For an exact channel that keeps history: its current position (the seam: replay ends here). */
  position: Position | null;
  /** One entry per recover request: whether everything missed was replayed, and how many messages. */
  recovered: Array<{ channel: string; recovered: boolean; replayed: number }>;
  /**
   * The history could not be read now (Redis out of reach): nothing was recovered, but nothing
   * is known lost either; the same subscribe may be sent again later.
   */
  unavailable?: boolean;
}

/**
 * One session as its node describes it, for `server.sessions()` and `deliverWhere`: plain JSON,
 * since with a cluster engine it crosses to the node that asked.
 */
export interface SessionInfo {
  clientId: string;
  /** The id of its authenticated user; null when anonymous. */
  user: string | null;
  /** Its identity's roles and claims (empty when anonymous). */
  roles: string[];
  claims: Record<string, unknown>;
  /** `session.data` as JSON (entries that JSON cannot hold are left out). */
  data: Record<string, unknown>;
  connectionType: string | null;
  /** The channels and patterns it is subscribed to. */
  subscriptions: string[];
}

/** A session of a node that died, as the engine knew it. */
export interface LostSession {
  clientId: string;
  user: string | null;
  /** The channels and patterns it was subscribed to. */
  subscriptions: string[];
}

/** What the server gives the engine so that publications reach this node's sessions and listeners. */
export interface EngineHost {
  /**
   * A broadcast publication, with the ids of this node's sessions subscribed to its channel
   * (deduplicated); the host skips `publication.exclude`.
   */
  onPublication(publication: Publication, clientIds: Iterable<string>): void;
  /** A publication addressed to one session on this node. */
  onDirect(publication: Publication, clientId: string): void;
  /** Ends a session of this node (asked for by any node, see `Engine.endSession`). */
  onEndSession(clientId: string): void;
  /**
   * Messages a session on this node missed on `channel`, in order, to be queued before anything
   * published later (they replace whatever of that channel's history is still queued for it).
   */
  onReplay(clientId: string, channel: string, payloads: readonly string[]): void;
  /** A message another node sent this one with `Engine.sendToNode` (forwarded requests: core/forwarding.ts). */
  onNodeMessage(from: string, payload: string): void;
  /**
   * Sessions of another node that died, which this node removed (each is removed by one node
   * only): what ends a session there (its presence leaves) is this node's to do.
   */
  onSessionsLost(sessions: readonly LostSession[]): void;
  /**
   * This node's sessions, which another node removed taking this one for dead (it was paused, say),
   * are registered again: what starting them says to others (presence joins) is said again.
   */
  onSessionsRestored(): void;
  /**
   * Another node holds a state channel this node had claimed: it took this node for dead (cut off
   * from Redis past the node timeout) and claimed it meanwhile. This node's copy must go, so that
   * one node serves it (`Engine.claimState`). Left out by hosts without state channels.
   */
  onStateLost?(channel: string, holder: string): void;
  /** This node's sessions, described (see `Engine.census`). */
  describeSessions(): SessionInfo[];
  /**
   * Whether an in-process listener of this node (`server.subscribe`) hears broadcasts on
   * `channel`: an engine that catches the node up on what it missed does so for them too, as for
   * its sessions. Left out: none does.
   */
  listensTo?(channel: string): boolean;
  /** How much history to keep, per channel. */
  readonly historySettings: HistorySettings;
  /** A failure the engine survived (a lost Redis connection, say): the server's 'error' event. */
  reportError(error: unknown): void;
  /** The engine is whole again after failures it reported (Redis answers again): the server's 'restored' event. */
  reportRestored(message: string): void;
}

export interface Engine {
  /** Short name for logs and stats: "memory", "redis". */
  readonly name: string;
  start(host: EngineHost): Promise<void>;
  close(): Promise<void>;
  /**
   * A random secret every node of the cluster shares (hex), set by the first node to start and
   * known once `start` has resolved: browser cookies are derived from it (security/browser-cookie.ts),
   * so that any node can tell a cookie another node gave. An engine without it leaves each node a
   * key of its own.
   */
  browserKey?(): string;
  /**
   * A session began on this node: `sendTo` reaches it (from any node) until `removeSession`.
   * `user` is the id of its authenticated user (null for an anonymous session), for presence.
   * Like `subscribe` and `publish`, it may answer at once (the memory engine does): callers wait
   * only when given a promise, and a failure then is thrown, not a rejection.
   */
  addSession(clientId: string, user?: string | null): MaybePromise<void>;
  /** The user of each session (null: anonymous or unknown), as every node sees them. */
  usersOf(clientIds: readonly string[]): Promise<(string | null)[]>;
  /** The sessions of one user, on every node. */
  sessionsOfUser(user: string): Promise<string[]>;
  /** Ends a session on whichever node holds it; false when no node knows it. */
  endSession(clientId: string): Promise<boolean>;
  /**
   * Subscribes a session and, in the same step, replays what it missed since each of `recover`'s
   * positions (at most `maxReplay` messages in all), so that nothing falls between the replay and
   * the live messages and nothing is in both.
   */
  subscribe(clientId: string, pattern: string, recover?: readonly RecoverRequest[], maxReplay?: number): MaybePromise<SubscribeOutcome>;
  unsubscribe(clientId: string, pattern: string): Promise<void>;
  /** Forgets a session that has ended and every subscription of it. */
  removeSession(clientId: string): Promise<void>;
  /**
   * Gives the publication its position (when its channel keeps history), records it, and delivers
   * it to every session whose subscriptions match its channel, on every node. False, and nothing
   * published, when it is the resend of one published already (its `once`, see PublishOnce).
   */
  publish(publication: Publication): MaybePromise<boolean>;
  /** Reads a channel's history; null when the channel keeps none. */
  history(channel: string, query?: HistoryQuery): Promise<HistoryPage | null>;
  /** Channels with a history and the messages kept in all, for metrics. */
  historyStats(): Promise<{ channels: number; messages: number }>;
  /**
   * Delivers to one session, wherever it is connected; false when no node knows it. With `once`
   * (API_DELIVERER), true without delivering again when its id was delivered already; an id that
   * could not be delivered is not kept.
   */
  sendTo(clientId: string, publication: Publication): Promise<boolean>;
  /** The sessions subscribed to exactly this channel or pattern (on every node). */
  subscribers(pattern: string): Promise<string[]>;
  /**
   * Which of `clientIds` subscribe to exactly this channel or pattern (on every node): asked for
   * a few sessions of a big channel, without listing all its subscribers.
   */
  subscribedAmong(pattern: string, clientIds: readonly string[]): Promise<string[]>;
  /** Number of sessions subscribed to exactly this channel or pattern. */
  subscriberCount(pattern: string): Promise<number>;
  /** Every channel or pattern that has at least one subscriber, with the count. */
  channels(): Promise<Map<string, number>>;
  /**
   * Every live session of every node, as its node describes it (`EngineHost.describeSessions`).
   * With a cluster engine the other nodes are asked; one that does not answer in time is left
   * out and reported.
   */
  census(): Promise<SessionInfo[]>;
  /**
   * The node that holds a session, when it is another node of the cluster; null when it is this
   * node, no node, or the engine has no other nodes (the memory engine). Rejects with
   * ERR_ENGINE_UNAVAILABLE when it cannot be known (Redis away).
   */
  ownerOf(clientId: string): Promise<string | null>;
  /** Sends `payload` to one node (its `EngineHost.onNodeMessage`); false when that node is not listening; rejects with ERR_ENGINE_UNAVAILABLE when that cannot be known (Redis away). */
  sendToNode(node: string, payload: string): Promise<boolean>;
  /**
   * Presence grace: marks `member` (a user, or a session) as just gone from `channel`, for
   * `ttlMs`, where every node sees it, so that a member coming back on any node finds it.
   * Resolves to the mark's token (a later mark of the same member replaces it).
   */
  markLeaving(channel: string, member: string, ttlMs: number): Promise<string>;
  /**
   * Removes the mark set by `markLeaving`; true when it was there (and had not expired). With
   * `token`, only that very mark: the node whose grace ends takes its own mark, never a newer one
   * set after the member came back and left again elsewhere.
   */
  takeLeaving(channel: string, member: string, token?: string): Promise<boolean>;
  /**
   * Claims a state channel for this node (state/state-relay.ts): resolves to null when this node
   * holds it now (no node did, or the one that did is dead), or to the live node that holds it.
   * An engine without other nodes (the memory engine) leaves the three `State` methods out: its
   * state channels are its own.
   */
  claimState?(channel: string): Promise<string | null>;
  /** The live node, other than this one, that holds a state channel; null when none does. */
  stateHolder?(channel: string): Promise<string | null>;
  /** Gives up this node's claim of a state channel (closed); another node's claim stays. */
  releaseState?(channel: string): Promise<void>;
  /**
   * Why the engine cannot reach its store now (Redis away: publishes reach this node's sessions
   * only), for `/ready`; null while it can. An engine without a store leaves it out.
   */
  away?(): string | null;
  /**
   * True when nothing could ever see a message on `channel` now, which the engine knows at once:
   * no subscriber to it (through any pattern) and no position of it ever given, so no history
   * anyone could recover. A presence event of such a channel is not published (core/presence.ts).
   * An engine that cannot tell at once (its subscribers are on other nodes too) leaves it out.
   */
  unseen?(channel: string): boolean;
  /**
   * Messages for one other node this node sent by way of a key, too large for pub/sub, and those
   * meant for it that it could not take (expired, Redis away): for `/metrics`. An engine whose
   * nodes do not talk through pub/sub leaves it out.
   */
  nodeMailStats?(): { stored: number; lost: number };
}
