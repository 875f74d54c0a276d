/**
 * The public client: `new Client(url, options)`, promise-based subscribe / publish / request,
 * typed events. Whether this tab holds the connection itself or a sibling tab holds it for
 * every tab of the origin (share.ts) is invisible here: both sit behind `Backend`.
 */
import { asPosition, channelProblem, isService, isWildcard, matches, type ConnectionType, type Message, type Position } from '@perihelion/protocol';
import { Bayeux, type State, type StateChange, type TransportChange } from './bayeux.js';
import { ClientError } from './errors.js';
import { Emitter } from './events.js';
import type { Extension } from './extensions.js';
import { shareAvailable, SharedBackend } from './share.js';
import { resolveOptions, type ClientOptions } from './options.js';
import type { RecoveryOutcome, SubscribeOutcome } from './subscriptions.js';

export type { ClientOptions };

export type Handler<T = unknown> = (data: T, message: Message) => void;

/** A member of a channel (server presence): one of its sessions, and its user (null: anonymous). */
export interface Member {
  clientId: string;
  user: string | null;
}

/** A member joined or left a channel. */
export interface PresenceEvent extends Member {
  action: 'join' | 'leave';
}

export interface SubscribeOptions {
  /** Called after a reconnection that needed recovery: true when every missed message was replayed, false when some were lost (reload the state). */
  onRecover?: (recovered: boolean, outcome: RecoveryOutcome) => void;
  /**
   * Where an earlier client left off (a process restarted, say): the position of the last message
   * it handled (`message.ext.position`), or, for a wildcard, of each channel under it. The first
   * subscribe asks the server for what followed, which replays it from its history; `onRecover`
   * and `subscription.recovered` say whether all of it was still there. Ignored for channels this
   * client has already received from, and when the pattern is subscribed already.
   */
  since?: Position | Record<string, Position>;
}

/** `since` as positions by channel, or a TypeError saying what it must be. */
function sinceByChannel(pattern: string, since: SubscribeOptions['since']): Record<string, Position> | undefined {
  if (since === undefined) return undefined;
  const wildcard = isWildcard(pattern);
  const byChannel = (wildcard ? since : { [pattern]: since }) as Record<string, unknown>;
  if (typeof byChannel !== 'object' || byChannel === null || Object.entries(byChannel).some(([channel, position]) => !asPosition(position) || isWildcard(channel) || !matches(pattern, channel))) {
    throw new TypeError(`since for ${pattern} must be ${wildcard ? 'positions by channel under it, {"<channel>": {epoch, offset}}' : 'a position {epoch, offset}'}, got ${JSON.stringify(since)}`);
  }
  return byChannel as Record<string, Position>;
}

export interface ClientEvents {
  /** Every state change. */
  state: StateChange;
  connecting: StateChange;
  connected: StateChange;
  disconnected: StateChange;
  /** A live session moved to another connection type (a WebSocket open again): the state stays `connected`. */
  transport: TransportChange;
  /** After a reconnection: whether the messages missed by a subscription were all recovered. */
  recovery: { pattern: string } & RecoveryOutcome;
  /** Something went wrong that no promise reports (a subscription refused after a reconnection). */
  error: ClientError;
}

export type Sharing = 'off' | 'worker' | 'leader' | 'follower';

/** What the client needs from whoever holds the connection: this tab's Bayeux, or the leader tab's. */
export interface Backend {
  readonly state: State;
  readonly clientId: string | undefined;
  readonly type: ConnectionType | undefined;
  /** Who holds the connection: this client alone, a SharedWorker, this tab for all, another tab. */
  readonly sharing: Sharing;
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  /** `since`: positions to recover from, by channel, for channels not received from yet (SubscribeOptions.since). */
  need(pattern: string, since?: Record<string, Position>): Promise<SubscribeOutcome>;
  release(pattern: string): Promise<void>;
  publish(channel: string, data: unknown, ext: Record<string, unknown> | undefined): Promise<Message>;
  call(channel: string, data: unknown, timeout: number): Promise<unknown>;
  batch<T>(fn: () => T): T;
  addExtension(extension: Extension): () => void;
}

/** What a backend reports to the client(s) it serves. */
export interface BackendEvents {
  deliver(message: Message): void;
  state(change: StateChange): void;
  transport(change: TransportChange): void;
  recovery(pattern: string, outcome: RecoveryOutcome): void;
  /** A subscription the server no longer accepts (after a reconnection). */
  refused(pattern: string, error: ClientError): void;
}

export class Subscription {
  /** Undefined until a reconnection needed recovery; then whether nothing was lost. */
  recovered: boolean | undefined;
  active = true;

  constructor(
    readonly pattern: string,
    /** @internal */ readonly handler: Handler<never>,
    /** @internal */ readonly options: SubscribeOptions,
    private readonly client: Client,
  ) {}

  /** Stops the handler; the server subscription ends with the last handler on the pattern. */
  unsubscribe(): Promise<void> {
    return this.client.remove(this);
  }
}

export class Client extends Emitter<ClientEvents> {
  readonly url: string;
  private backend: Backend;
  private readonly subscriptions = new Map<string, Set<Subscription>>();
  private readonly autoConnect: boolean;
  private readonly timeout: number;
  /** connect() was called (by the application or by autoConnect). */
  private started = false;

  constructor(url: string, options: ClientOptions = {}) {
    super();
    const { url: absolute, resolved, worker } = resolveOptions(url, options);
    this.url = absolute;
    this.timeout = resolved.timeout;
    this.autoConnect = options.autoConnect ?? true;
    const events: BackendEvents = {
      deliver: (message) => this.dispatch(message),
      state: (change) => this.changed(change),
      transport: (change) => this.emit('transport', change),
      recovery: (pattern, outcome) => this.recovered(pattern, outcome),
      refused: (pattern, error) => this.refused(pattern, error),
    };
    const shared = (options.shared ?? true) && shareAvailable();
    this.backend = shared ? new SharedBackend(this.url, (relay) => new Bayeux(this.url, resolved, relay), events, worker) : new Bayeux(this.url, resolved, events);
  }

  get state(): State {
    return this.backend.state;
  }

  /** The session's clientId (the leader tab's when shared), once handshaken. */
  get clientId(): string | undefined {
    return this.backend.clientId;
  }

  /** The connection type in use. */
  get transport(): ConnectionType | undefined {
    return this.backend.type;
  }

  /** Who holds the connection: "off" (this client), "worker" (a SharedWorker), "leader" (this tab, for every tab), "follower" (another tab). */
  get sharing(): Sharing {
    return this.backend.sharing;
  }

  /** Connects (handshake, then connect); resolves once connected, rejects if the server refuses the handshake. */
  connect(): Promise<void> {
    this.started = true;
    return this.backend.connect();
  }

  /** Ends the session (in shared mode: this tab's subscriptions; the connection stays for the other tabs). */
  async disconnect(): Promise<void> {
    this.started = false;
    await this.backend.disconnect();
  }

  /**
   * Calls `handler(data, message)` for every message on `pattern` (a channel, `/a/*` or `/a/**`).
   * Resolves once the server confirmed the subscription; rejects with the server's error.
   */
  async subscribe<T = unknown>(pattern: string, handler: Handler<T>, options: SubscribeOptions = {}): Promise<Subscription> {
    const problem = channelProblem(pattern);
    if (problem) throw new ClientError('invalid-channel', `cannot subscribe to ${JSON.stringify(pattern)}: ${problem}`);
    if (pattern.startsWith('/meta/')) throw new ClientError('invalid-channel', 'meta channels are the protocol’s own; subscribe to an application channel');
    const since = sinceByChannel(pattern, options.since);
    this.ensureStarted();
    const subscription = new Subscription(pattern, handler as Handler<never>, options, this);
    let set = this.subscriptions.get(pattern);
    const first = !set;
    if (!set) this.subscriptions.set(pattern, (set = new Set()));
    set.add(subscription);
    try {
      const outcome = await this.backend.need(pattern, since);
      if (first || subscription.recovered === undefined) subscription.recovered = outcome.recovered;
    } catch (error) {
      set.delete(subscription);
      if (set.size === 0 && this.subscriptions.get(pattern) === set) this.subscriptions.delete(pattern);
      subscription.active = false;
      throw error;
    }
    return subscription;
  }

  /** @internal */
  async remove(subscription: Subscription): Promise<void> {
    if (!subscription.active) return;
    subscription.active = false;
    const set = this.subscriptions.get(subscription.pattern);
    if (!set?.delete(subscription) || set.size > 0) return;
    this.subscriptions.delete(subscription.pattern);
    await this.backend.release(subscription.pattern);
  }

  /**
   * Publishes `data` on `channel`; resolves when the server acknowledged it, rejects with the
   * server's error (`ClientError`, code "bayeux") when it refused. Offline, it waits in a bounded queue
   * for the connection; the `timeout` option counts from sending, and a `timeout` rejection leaves
   * the outcome unknown (the server may have delivered it).
   *
   * `idempotencyKey` (1 to 255 visible ASCII characters: an order number and its event, a UUID
   * kept with the work) makes publishing again safe whatever became of the first try: a timeout,
   * a page reloaded, a process restarted. The server publishes the same key from the same user
   * once within its `idempotencyWindow` (10 minutes by default); a repeat is acknowledged with
   * `ext.repeated: true`. A key that is not one is refused by the server (code "bayeux", 400).
   */
  publish(channel: string, data: unknown, options: { ext?: Record<string, unknown>; idempotencyKey?: string } = {}): Promise<Message> {
    const problem = channelProblem(channel, { allowWildcard: false });
    if (problem) return Promise.reject(new ClientError('invalid-channel', `cannot publish to ${JSON.stringify(channel)}: ${problem}`));
    const { idempotencyKey } = options;
    this.ensureStarted();
    return this.backend.publish(channel, data, idempotencyKey === undefined ? options.ext : { ...options.ext, idempotencyKey });
  }

  /**
   * A request to a server-side service (`/service/…`): resolves to the data of its answer, rejects
   * on refusal or after `timeout` ms from this call, connected or not (a request that expires
   * before it could be sent is never sent).
   */
  request<T = unknown>(channel: string, data: unknown, options: { timeout?: number } = {}): Promise<T> {
    if (!isService(channel) || channelProblem(channel, { allowWildcard: false })) {
      return Promise.reject(new ClientError('invalid-channel', `requests go to a /service/… channel, not ${JSON.stringify(channel)}`));
    }
    this.ensureStarted();
    return this.backend.call(channel, data, options.timeout ?? this.timeout) as Promise<T>;
  }

  /** The members of `channel`, as the server's `/service/presence` answers; rejects when the server refuses. */
  async presence(channel: string): Promise<Member[]> {
    return (await this.request<{ members: Member[] }>('/service/presence', { channel })).members;
  }

  /**
   * Calls `handler(event, channel)` when a member joins or leaves `channel` (or a channel of a
   * `/a/*`, `/a/**` pattern); the server publishes these on `/presence` + the channel.
   */
  onPresence(channel: string, handler: (event: PresenceEvent, channel: string) => void): Promise<Subscription> {
    // An invalid name is refused by subscribe itself, as given (not prefixed).
    if (channelProblem(channel)) return this.subscribe(channel, handler as never);
    return this.subscribe<PresenceEvent>(`/presence${channel}`, (event, message) => handler(event, message.channel.slice(9)));
  }

  /**
   * Sends every message issued while `fn` runs (publishes, subscribes) in one request; returns
   * what `fn` returns. An async `fn` holds the batch until it settles: it must not await the
   * replies to its own messages, which leave only after it.
   */
  batch<T>(fn: () => T): T {
    return this.backend.batch(fn);
  }

  /** Adds an extension (`incoming` / `outgoing` hooks on every message); returns a function that removes it. */
  addExtension(extension: Extension): () => void {
    return this.backend.addExtension(extension);
  }

  private ensureStarted(): void {
    if (this.autoConnect && (!this.started || this.backend.state === 'disconnected')) void this.connect().catch(() => {});
  }

  private dispatch(message: Message): void {
    for (const [pattern, set] of this.subscriptions) {
      if (!matches(pattern, message.channel)) continue;
      for (const subscription of set) {
        try {
          subscription.handler(message.data as never, message);
        } catch (error) {
          // An application handler's error must not stop deliveries to the others.
          queueMicrotask(() => {
            throw error;
          });
        }
      }
    }
  }

  private changed(change: StateChange): void {
    this.emit('state', change);
    this.emit(change.state, change);
  }

  private recovered(pattern: string, outcome: RecoveryOutcome): void {
    for (const subscription of this.subscriptions.get(pattern) ?? []) {
      subscription.recovered = outcome.recovered;
      subscription.options.onRecover?.(outcome.recovered, outcome);
    }
    this.emit('recovery', { pattern, ...outcome });
  }

  private refused(pattern: string, error: ClientError): void {
    for (const subscription of this.subscriptions.get(pattern) ?? []) subscription.active = false;
    this.subscriptions.delete(pattern);
    this.emit('error', error);
  }
}
