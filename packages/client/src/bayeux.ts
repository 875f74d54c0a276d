/**
 * The Bayeux machine: one session with the server over one transport at a time.
 *
 * Life of a session (Bayeux §Handshake, §Connect, and the server's advice):
 *   handshake (over websocket when it opens, else long-polling, else callback-polling)
 *   → pick the connection type: our order ∩ the server's `supportedConnectionTypes`
 *   → /meta/connect with `advice.timeout: 0` (answered at once; over a WebSocket it travels in the
 *     handshake's frame with the subscribes, asked for with `ext.bundle`, see docs/protocol.md)
 *   → connected
 *   → (streamed types) open the push line → re-subscribe what is wanted → send what waited
 *   → /meta/connect again after each reply, `advice.interval` later, until told otherwise.
 * A lost line goes back to `connecting` and retries with jittered backoff; `reconnect:
 * "handshake"` (unknown session) starts over with a new session and re-subscribes, asking the
 * server to replay what was missed (`ext.recover`) from the last position seen on each channel.
 * A line that dies under a live session (a cut with FIN or RST, or a silence longer than the
 * server's hold plus `lineTimeout`) may have swallowed deliveries the server took as written: the
 * same session re-subscribes with `ext.recover` too, and the server replays them.
 *
 * This module is the state machine: the session's steps and states, the server's advice, the
 * line in use and the meta messages awaiting their replies. It composes the rest: which
 * transport next (negotiation.ts), publishes and requests on their way (outbox.ts), the
 * subscriptions and their positions (subscriptions.ts), the extension hooks (extensions.ts).
 */
import { isStreamedConnectionType, type Advice, type ConnectionType, type Message, type Position } from '@perihelion/protocol';
import { backoff } from './backoff.js';
import type { Backend, BackendEvents } from './client.js';
import { ClientError } from './errors.js';
import { addExtension, runExtensions, type Extension } from './extensions.js';
import { Negotiation, openTransport } from './negotiation.js';
import type { ResolvedOptions } from './options.js';
import { DEFAULT_LIMITS, readLimits, type FrameLimits } from './limits.js';
import { Outbox, type OutboxSession } from './outbox.js';
import { Subscriptions, type SubscribeOutcome, type SubscriptionsSession } from './subscriptions.js';
import { Http, type Transport, type TransportContext } from './transports/transport.js';

export type State = 'disconnected' | 'connecting' | 'connected';

export interface StateChange {
  state: State;
  previous: State;
  /** Why: "connect", "handshake", "network: …", "server: …", "client", "gap", … */
  reason: string;
  /** The connection type in use, once one is chosen. */
  transport: ConnectionType | undefined;
  /** Set when the client stops because of an error (handshake refused, no transport). */
  error?: ClientError;
}

/** A live session moved to another connection type (it stays `connected`, on the same session). */
export interface TransportChange {
  transport: ConnectionType;
  previous: ConnectionType;
}

interface Pending {
  resolve(reply: Message): void;
  reject(error: LineLost | ClientError): void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * How long the WebSocket of a live session may fail to open again before the client gives it up
 * for another transport, ms: longer than a network's usual blip, short enough that a proxy that
 * starts refusing upgrades costs a few seconds, not the session's life.
 */
const WEBSOCKET_REOPEN_GRACE = 5000;

/** The line went away under a request. */
class LineLost extends Error {
  constructor(
    message: string,
    readonly opened: boolean,
    readonly type: ConnectionType | undefined,
  ) {
    super(message);
  }
}

export class Bayeux implements Backend, OutboxSession, SubscriptionsSession {
  state: State = 'disconnected';
  clientId: string | undefined;
  type: ConnectionType | undefined;
  readonly sharing = 'off' as const;
  /** The line in use, if any (read by the outbox). */
  line: Transport | null = null;
  /**
   * The server's advice for the session: `interval` is the pause between connects (and the floor
   * of the reconnection backoff), `timeout` the longest the server holds a connect.
   */
  private advice: Required<Pick<Advice, 'reconnect' | 'interval' | 'timeout'>> = { reconnect: 'retry', interval: 0, timeout: 30_000 };
  /** What one request or frame may carry: the server's, once a handshake reply said (kept across sessions). */
  limits: FrameLimits = DEFAULT_LIMITS;
  /**
   * The pause between the connects of a streamed type. The server answers those at once and
   * advises `interval: <its hold>, timeout: 0`: they only keep the session alive while the stream
   * carries the messages, so that interval paces them and is no floor for reopening a lost line.
   */
  private keepAlive: number | undefined;
  private readonly negotiation: Negotiation;
  private readonly outbox: Outbox;
  private readonly subscriptions: Subscriptions;
  /** Handshakes, connects and disconnects awaiting their replies, by id. */
  private readonly meta = new Map<string, Pending>();
  private readonly extensions: Extension[] = [];
  private readonly http: Http | undefined;
  private seq = 0;
  /** This client, for the server's publish deduplication across its sessions (handshake `ext.instance`). */
  private readonly instance = Array.from(crypto.getRandomValues(new Uint32Array(3)), (n) => n.toString(36)).join('');
  /**
   * Whether handshakes over a WebSocket carry the first connect (see firstConnect). Off for good
   * once a bundled handshake failed or was not taken: a server that does not follow §4.1.1
   * (CometD's fails a request that holds more than its handshake) is then asked the plain way.
   */
  private bundling = true;
  private attempts = 0;
  /** Since when the WebSocket of a live session cannot be opened again (see connectOnce). */
  private reopenFailingSince: number | undefined;
  /** The connection types the server offered this session (its handshake's `supportedConnectionTypes`). */
  private offered: readonly string[] = [];
  /** A WebSocket opened beside the line of a live session on another type, and whether it is open yet (see upgrade). */
  private probe: Transport | null = null;
  private probeOpen = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The step the timer will take. */
  private next: 'handshake' | 'connect' | undefined;
  /**
   * Bumped whenever the next step is decided (a handshake, a connect, a scheduled retry, a stop):
   * a step still awaiting a reply from before is stale and drops what it learns.
   */
  private turn = 0;
  private stopped = true;
  /**
   * Why the client stopped, when it was refused (no usable transport, a refused handshake): a
   * publish, request or subscription made then fails with it rather than wait for a connection
   * that will not come until connect() is called again.
   */
  private refusal: ClientError | null = null;
  private starting: { promise: Promise<void>; resolve(): void; reject(error: ClientError): void } | null = null;

  constructor(
    private readonly url: string,
    private readonly options: ResolvedOptions,
    private readonly events: BackendEvents,
  ) {
    this.negotiation = new Negotiation(options);
    this.outbox = new Outbox(this, options);
    this.subscriptions = new Subscriptions(this, this.outbox, events, options);
    const fetchFn = options.env.fetch;
    const g = globalThis as unknown as { addEventListener?: (type: string, listener: () => void) => void; WorkerGlobalScope?: unknown };
    // Browsers (pages and workers) keep cookies themselves; elsewhere Http keeps them.
    const browser = options.env.document !== undefined || typeof g.WorkerGlobalScope === 'function';
    this.http = fetchFn ? new Http(fetchFn, browser, options.headers) : undefined;
    if (browser && typeof g.addEventListener === 'function') {
      // See network().
      g.addEventListener('offline', () => this.network(false));
      g.addEventListener('online', () => this.network(true));
    }
  }

  /**
   * The browser says the network went away or came back. It knows before any timeout does: a
   * line kept through an outage may be dead without a word (a WebSocket behind a NAT that forgot
   * it), so it is dropped at once, and the first attempt is made as soon as the network is back,
   * not after the backoff.
   */
  network(online: boolean): void {
    if (this.stopped) return;
    if (!online) {
      if (this.line && this.state === 'connected') this.retry('connect', 'network: offline');
    } else if (this.state === 'connecting' && this.next) {
      this.attempts = 0;
      this.schedule(this.next, 0);
    }
  }

  addExtension(extension: Extension): () => void {
    return addExtension(this.extensions, extension);
  }

  /** Resolves when connected; rejects when the client stops first (handshake refused, disconnect()). */
  connect(): Promise<void> {
    if (this.state === 'connected') return Promise.resolve();
    if (!this.starting) {
      let resolve!: () => void;
      let reject!: (error: ClientError) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      // connect() callers may not wait; an unobserved rejection is not an application error.
      promise.catch(() => {});
      this.starting = { promise, resolve, reject };
    }
    // The handshake may stop the client at once (no usable transport), which clears `starting`.
    const { promise } = this.starting;
    if (this.stopped) {
      this.stopped = false;
      this.refusal = null;
      this.attempts = 0;
      this.setState('connecting', 'connect');
      void this.handshake();
    }
    return promise;
  }

  // ------------------------------------------------------------------ messages and subscriptions (outbox.ts, subscriptions.ts)

  publish(channel: string, data: unknown, ext: Record<string, unknown> | undefined): Promise<Message> {
    if (this.stopped && this.refusal) return Promise.reject(this.refusal);
    return this.outbox.publish(channel, data, ext);
  }

  call(channel: string, data: unknown, timeout: number): Promise<unknown> {
    if (this.stopped && this.refusal) return Promise.reject(this.refusal);
    return this.outbox.call(channel, data, timeout);
  }

  batch<T>(fn: () => T): T {
    return this.outbox.batch(fn);
  }

  need(pattern: string, since?: Record<string, Position>): Promise<SubscribeOutcome> {
    if (this.stopped && this.refusal) return Promise.reject(this.refusal);
    return this.subscriptions.need(pattern, since);
  }

  release(pattern: string): Promise<void> {
    return this.subscriptions.release(pattern);
  }

  /** Positions relayed to a tab that takes over the shared connection (see Subscriptions). */
  seedPositions(positions: Iterable<[string, Position]>): void {
    this.subscriptions.seedPositions(positions);
  }

  // ------------------------------------------------------------------ session

  private async handshake(): Promise<void> {
    clearTimeout(this.timer);
    const turn = ++this.turn;
    if (this.stopped) return;
    this.closeLine();
    this.clientId = undefined;
    const type = this.negotiation.forHandshake();
    if (!type) return this.stop('no transport', new ClientError('no-transport', `no usable transport: offered ${this.options.transports.join(', ')}, but this environment lacks what they need (pass WebSocket, fetch or EventSource in the options)`));
    this.type = type;
    this.openLine(type);
    let token: string | undefined;
    try {
      // Over a WebSocket, awaited even when it is not a function: the handshake leaves a turn
      // later, so that the subscribes asked for in the turn that started the client go in its
      // frame (a bundle). Other transports send it at once, as they always did.
      const { token: given } = this.options;
      token = typeof given === 'function' ? await given() : type === 'websocket' ? await given : given;
    } catch {
      token = undefined;
    }
    if (turn !== this.turn) return;
    const message: Message = {
      channel: '/meta/handshake',
      version: '1.0',
      minimumVersion: '1.0',
      supportedConnectionTypes: this.negotiation.usable(),
      advice: { timeout: 60_000, interval: 0 },
      // Told of the positions it is not sent (a publish of its own with `echo: false`, a server
      // publish that excludes it), it takes no such hole for messages lost (Subscriptions.deliver).
      // Asked for the limits of its frames too (limits.ts). `instance` names this client across its
      // sessions: a publish resent on a new session after its reply was lost is one the server
      // may know already (its ids run on from session to session).
      ext: { skips: true, limits: true, instance: this.instance, ...(token !== undefined ? { token } : {}) },
    };
    // Over a WebSocket the subscriptions and the first connect go in the handshake's frame (sent
    // in the same turn), asked for with ext.bundle: set up in one round trip instead of two, the
    // server answering all of it in one frame.
    const bundling = this.bundling && type === 'websocket';
    if (bundling) message.ext = { ...message.ext, bundle: true };
    const handshaken = this.request(message, this.options.timeout);
    if (bundling && this.line) {
      // The new session holds nothing yet: every pattern is asked for, with its positions.
      this.forgetOldSession();
      this.subscriptions.sendWanted(true);
      this.outbox.sendWithHandshake(this.line);
    }
    const bundled = bundling ? this.firstConnect(type) : undefined;
    let reply: Message;
    try {
      reply = await handshaken;
    } catch (error) {
      bundled?.cancel();
      if (bundled) this.bundling = false;
      if (turn !== this.turn) return;
      this.closeLine();
      // A line that never worked is blocked here (a refused upgrade, a cross-origin POST without
      // CORS), and so is a WebSocket that opens but cannot carry a handshake (a proxy that
      // accepts and drops it): negotiate down at once.
      if (error instanceof LineLost && error.type !== undefined && (!error.opened || error.type === 'websocket')) {
        this.negotiation.blocked(error.type);
        if (this.negotiation.usable().length > 0) return this.schedule('handshake', 0);
      }
      return this.retry('handshake', `network: ${(error as Error).message}`);
    }
    if (turn !== this.turn) return;
    this.keepAlive = undefined;
    this.takeAdvice(reply);
    this.limits = readLimits(reply.ext?.limits, this.limits);
    // A server that does not take bundles ignores the connect and the subscribes (Bayeux
    // §4.1.1): they are sent again on their own, and so are they after a refused handshake.
    const firstReply = bundled && reply.successful === true && reply.ext?.bundle === true ? bundled.reply : undefined;
    // Taken, the bundled connect is held like any other: given the server's hold now known.
    if (bundled && firstReply) bundled.hold(this.advice.timeout + this.options.lineTimeout);
    if (bundled && !firstReply) {
      bundled.cancel();
      this.outbox.forgetSubscribes();
      this.bundling = false;
    }
    if (reply.successful !== true || typeof reply.clientId !== 'string') {
      const error = ClientError.fromReply(reply);
      if (reply.advice?.reconnect === 'none') return this.stop('handshake refused', new ClientError('handshake-denied', error.message, error.bayeux));
      return this.retry('handshake', `server: ${reply.error ?? 'handshake refused'}`);
    }
    this.clientId = reply.clientId;
    const offered = Array.isArray(reply.supportedConnectionTypes) ? reply.supportedConnectionTypes : [type];
    this.offered = offered;
    const chosen = this.negotiation.forSession(offered, type);
    if (chosen === undefined) {
      return this.stop('no transport', new ClientError('no-transport', `the server offers ${offered.join(', ')}; this client can use ${this.negotiation.usable().join(', ')}`));
    }
    if (chosen !== type) {
      // Keep the WebSocket only if it is the chosen type; HTTP lines are cheap to replace.
      bundled?.cancel();
      this.closeLine();
      this.type = chosen;
    }
    // Subscriptions and replies of the old session are void; what waited is re-sent (unless it
    // went with the handshake, for this session).
    if (!firstReply) this.forgetOldSession();
    void this.connectOnce(chosen === type ? firstReply : undefined);
  }

  /** A new session holds no subscription: every pattern is wanted again, and nothing queued for the old one is sent. */
  private forgetOldSession(): void {
    this.subscriptions.newSession();
    this.outbox.dropSubscribes();
  }

  /**
   * The first connect of a session, made to travel with its handshake: `reply` is its answer,
   * `hold` gives it the time a held connect gets once the server's advice is known, and `cancel`
   * stops waiting for it (no bundle after all). Its clientId is the server's to fill in
   * (core/dispatch.ts on the server). It asks for no `timeout: 0`: the handshake's reply in the
   * same frame says the session is connected, and the server holds this connect as the line's
   * first heartbeat, so the set-up is one frame each way (docs/protocol.md).
   */
  private firstConnect(type: ConnectionType): { reply: Promise<Message>; hold: (ms: number) => void; cancel: () => void } | undefined {
    const message: Message = { channel: '/meta/connect', connectionType: type };
    let id: string | undefined;
    const reply = this.request(message, this.options.timeout, (sentId) => (id = sentId));
    // Waited for only when the server takes the bundle; a line lost meanwhile fails the handshake.
    reply.catch(() => {});
    if (id === undefined) return undefined;
    const cancel = (): void => {
      const pending = this.meta.get(id!);
      if (!pending) return;
      this.meta.delete(id!);
      clearTimeout(pending.timer);
    };
    return { reply, hold: (ms) => this.rearm(id!, ms), cancel };
  }

  /**
   * `bundledReply`: the answer to the first connect that went with the handshake (see
   * firstConnect); the session is connected already, and that connect is the held one.
   */
  private async connectOnce(bundledReply?: Promise<Message>): Promise<void> {
    clearTimeout(this.timer);
    const turn = ++this.turn;
    if (this.stopped || this.clientId === undefined || this.type === undefined) return;
    const first = this.state !== 'connected';
    if (!first && !bundledReply) this.upgrade();
    const line = this.line ?? this.openLine(this.type);
    if (first && bundledReply) this.connected();
    const message: Message = {
      channel: '/meta/connect',
      clientId: this.clientId,
      connectionType: this.type,
      // Answered at once: the client learns it is connected without waiting a whole hold.
      ...(first ? { advice: { timeout: 0 } } : {}),
    };
    const streamed = isStreamedConnectionType(this.type);
    let reply: Message;
    try {
      // A held connect is the line's heartbeat: no reply within the hold plus the network's
      // allowance means the line is dead, even if it never closed.
      reply = await (bundledReply ?? this.request(message, first || streamed ? this.options.timeout : this.advice.timeout + this.options.lineTimeout));
    } catch (error) {
      if (turn !== this.turn) return;
      // The state first, so that it carries this reason rather than the closing line's.
      if (this.state === 'connected') this.setState('connecting', `network: ${(error as Error).message}`);
      this.closeLine();
      if (error instanceof LineLost && !error.opened && error.type === 'websocket') {
        // The socket that worked before cannot be opened again. Mostly the network is down for a
        // moment: the session is kept (no leave and join in presence, nothing to recover) and
        // the socket tried again with backoff. Only when it stays shut (a proxy that now refuses
        // upgrades) is the session renegotiated from scratch, over another transport.
        this.reopenFailingSince ??= Date.now();
        if (Date.now() - this.reopenFailingSince >= WEBSOCKET_REOPEN_GRACE) {
          this.reopenFailingSince = undefined;
          this.negotiation.blocked('websocket');
          this.abandonSession();
          return this.retry('handshake', `network: ${error.message}`);
        }
      }
      return this.retry('connect', `network: ${(error as Error).message}`);
    }
    this.reopenFailingSince = undefined;
    if (turn !== this.turn) return;
    this.takeAdvice(reply, streamed);
    if (reply.successful !== true) {
      const reconnect = reply.advice?.reconnect ?? this.advice.reconnect;
      if (reconnect === 'none') return this.stop(`server: ${reply.error ?? 'connect refused'}`, ClientError.fromReply(reply));
      if (reconnect === 'handshake') return this.retry('handshake', `server: ${reply.error ?? 'session unknown'}`);
      return this.retry('connect', `server: ${reply.error ?? 'connect failed'}`);
    }
    if (first && !bundledReply) {
      if (streamed && line.openStream) {
        const opened = await this.openStream(line);
        if (opened === 'buffered') return;
        if (opened === 'failed' || turn !== this.turn) return;
      }
      this.connected();
    }
    if (reply.advice?.reconnect === 'none') return this.stop('server: reconnect none');
    if (reply.advice?.reconnect === 'handshake') return this.retry('handshake', 'server: advice handshake');
    const delay = Math.max(0, streamed ? (this.keepAlive ?? this.advice.interval) : this.advice.interval);
    // The first held connect goes in this turn, so it shares the frame of the subscribes just sent.
    if (first && !bundledReply && delay === 0 && this.type === 'websocket') return void this.connectOnce();
    this.schedule('connect', delay);
  }

  /**
   * Moves a live session to a WebSocket that may open again (its refusal is older than
   * `transportRetry`, see Negotiation.upgrade), on the same session. The socket is opened beside
   * the line in use, which carries the session meanwhile, so that a socket refused, or swallowed
   * by a proxy until `openTimeout`, costs nothing but itself. Once it is open, the next connect
   * goes over it, when no reply is awaited (none can be lost with the old line). A stream may be
   * carrying deliveries at any moment: what it wrote and was not read is asked for again from the
   * last positions, as after a lost line (but only a loss is reported: nothing was cut).
   */
  private upgrade(): void {
    const from = this.type;
    if (from === undefined) return;
    const probe = this.probe;
    if (probe === null) {
      const better = this.negotiation.upgrade(from, this.offered);
      if (better !== undefined) this.probe = this.makeLine(better);
      return;
    }
    if (!this.probeOpen || this.meta.size > 0 || this.outbox.busy) return;
    this.probe = null;
    this.probeOpen = false;
    const old = this.line;
    this.line = probe;
    this.type = probe.type;
    old?.close();
    if (isStreamedConnectionType(from)) {
      // Asked for in the frame of the connect that moves the session, so that the replay comes
      // at once over the new socket (past a gap, live messages wait for it: subscriptions.ts).
      this.subscriptions.lineLost('moved');
      this.subscriptions.sendWanted();
    }
    this.events.transport({ transport: probe.type, previous: from });
  }

  /** The socket opened beside the line failed before the session moved to it: blocked again for `transportRetry`. */
  private probeLost(): void {
    const probe = this.probe!;
    this.probe = null;
    this.probeOpen = false;
    this.negotiation.blocked(probe.type);
  }

  /** The session's first connect succeeded (or its bundled set-up was taken): what waited for it goes. */
  private connected(): void {
    this.attempts = 0;
    this.setState('connected', 'connect');
    this.starting?.resolve();
    this.starting = null;
    this.subscriptions.sendWanted();
    this.outbox.scheduleFlush();
  }

  /**
   * Opens the push line of a streamed type. The server's first frame comes at once; if it does
   * not arrive within `streamTimeout`, something between buffers the response: this type is
   * abandoned for the next one (long-polling) on the same session.
   */
  private async openStream(line: Transport): Promise<'open' | 'buffered' | 'failed'> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const buffered = new Promise<'buffered'>((resolve) => {
      timer = setTimeout(() => resolve('buffered'), this.options.streamTimeout);
    });
    const outcome = await Promise.race([
      // Once open, a stream that carries nothing (not even the server's heartbeat) for the
      // server's hold plus the network's allowance is dead: it is dropped like a closed one.
      line.openStream!(this.clientId!, this.advice.timeout + this.options.lineTimeout).then(
        () => 'open' as const,
        () => 'failed' as const,
      ),
      buffered,
    ]);
    clearTimeout(timer);
    if (outcome === 'buffered' && this.line === line && !this.stopped) {
      this.negotiation.blocked(line.type);
      this.closeLine();
      const next = this.negotiation.polling();
      if (next === undefined) {
        this.retry('handshake', `network: the ${line.type} stream is buffered by an intermediary`);
        return 'buffered';
      }
      this.type = next;
      void this.connectOnce();
    }
    return outcome;
  }

  retry(step: 'handshake' | 'connect', reason: string): void {
    if (this.stopped) return;
    // The state first, so that it carries this reason rather than the closing line's. Already
    // connecting, each failed attempt is told too (`previous` is `connecting`): a server that
    // refuses (404, 403, 503) would otherwise leave the application waiting without a word.
    if (this.state !== 'connecting') this.setState('connecting', reason);
    else this.events.state({ state: 'connecting', previous: 'connecting', reason, transport: this.type });
    this.closeLine();
    const delay = backoff(this.attempts++, this.options.minReconnectDelay, this.options.maxReconnectDelay, Math.max(0, this.advice.interval));
    this.schedule(step, delay);
  }

  private schedule(step: 'handshake' | 'connect', delay: number): void {
    clearTimeout(this.timer);
    this.turn++;
    this.next = step;
    this.timer = setTimeout(() => void (step === 'handshake' ? this.handshake() : this.connectOnce()), delay);
  }

  private abandonSession(): void {
    const clientId = this.clientId;
    this.clientId = undefined;
    if (clientId === undefined || !this.http) return;
    // A fire-and-forget POST: the server ends the session at once instead of sweeping it later.
    void this.http
      .request(this.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([{ channel: '/meta/disconnect', clientId, id: this.nextId() }]) })
      .then((response) => response.body?.cancel())
      .catch(() => {});
  }

  /** Starts over with a new session, re-subscribing from the last positions (used on a gap). */
  rehandshake(reason: string): void {
    if (this.stopped || this.subscriptions.dropping) return;
    this.subscriptions.dropping = true;
    // Best effort: tell the server the old session is over instead of letting it expire.
    this.abandonSession();
    // The state first, so that it carries this reason rather than the closing line's.
    this.setState('connecting', reason);
    this.closeLine();
    this.schedule('handshake', 0);
  }

  private stop(reason: string, error?: ClientError): void {
    this.stopped = true;
    this.turn++;
    clearTimeout(this.timer);
    this.closeLine();
    this.clientId = undefined;
    const failure = error ?? new ClientError('disconnected', `the client is disconnected (${reason})`);
    this.refusal = error ?? null;
    this.outbox.fail(failure);
    this.subscriptions.stop(failure);
    this.starting?.reject(failure);
    this.starting = null;
    this.setState('disconnected', reason, error);
  }

  async disconnect(): Promise<void> {
    if (this.stopped) {
      // Never started (or stopped already): what waits for a connection is told it will not come.
      const failure = new ClientError('disconnected', 'the client is disconnected (client)');
      this.outbox.fail(failure);
      this.subscriptions.stop(failure);
      return;
    }
    const line = this.line;
    const clientId = this.clientId;
    this.stopped = true;
    this.turn++;
    clearTimeout(this.timer);
    if (line && clientId !== undefined && this.state === 'connected') {
      await this.request({ channel: '/meta/disconnect', clientId }, Math.min(this.options.timeout, 2000)).catch(() => {});
    }
    this.stop('client');
  }

  // ------------------------------------------------------------------ lines

  private openLine(type: ConnectionType): Transport {
    this.closeLine();
    const line = this.makeLine(type);
    this.line = line;
    return line;
  }

  /** A new line of `type`, heard while it is the session's line (or the probe, see upgrade). */
  private makeLine(type: ConnectionType): Transport {
    const context: TransportContext = {
      url: this.url,
      env: this.options.env,
      http: this.http!,
      limits: () => this.limits,
      host: {
        receive: (messages) => {
          if (this.line === line) this.receive(messages);
        },
        lost: (reason, opened) => {
          if (this.line === line) this.lineLost(reason, opened, type);
          else if (this.probe === line) this.probeLost();
        },
        opened: () => {
          if (this.probe === line) this.probeOpen = true;
        },
      },
    };
    const line = openTransport(type, context, this.options.openTimeout);
    return line;
  }

  private closeLine(): void {
    // A session leaving its line leaves the socket it was opening beside it too.
    if (this.probe) {
      this.probe.close();
      this.probe = null;
      this.probeOpen = false;
    }
    const line = this.line;
    if (!line) return;
    this.line = null;
    line.close();
    this.abandonRequests(`the ${line.type} line was closed`, true, line.type);
  }

  private lineLost(reason: string, opened: boolean, type: ConnectionType): void {
    const waiting = this.meta.size > 0;
    this.line = null;
    this.abandonRequests(reason, opened, type);
    // Someone awaiting a handshake or connect reply takes it from here; otherwise (a stream
    // dropped between two connects) reconnect now, unless the stream's last words were that the
    // server ended the session for good (`reconnect: "none"`, as a held connect is told).
    if (waiting) return;
    if (this.advice.reconnect === 'none') return this.stop('server: reconnect none');
    this.retry('connect', `network: ${reason}`);
  }

  /** Requests on a dead line: meta requests fail; publishes and subscribes wait for the next line. */
  private abandonRequests(reason: string, opened: boolean, type: ConnectionType): void {
    for (const [id, pending] of this.meta) {
      this.meta.delete(id);
      clearTimeout(pending.timer);
      pending.reject(new LineLost(reason, opened, type));
    }
    for (const pattern of this.outbox.lineLost()) this.subscriptions.unanswered(pattern);
    if (this.state === 'connected' && !this.stopped) this.setState('connecting', `network: ${reason}`);
  }

  // ------------------------------------------------------------------ meta requests

  nextId(): string {
    return String(++this.seq);
  }

  /** Sends one meta message (handshake, connect, disconnect) at once and awaits its reply; `sent` learns its id. */
  private request(message: Message, timeout: number, sent?: (id: string) => void): Promise<Message> {
    const line = this.line;
    if (!line) return Promise.reject(new LineLost('no line', false, this.type));
    const id = this.nextId();
    const out = this.outgoing({ ...message, id });
    if (out) sent?.(id);
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.meta.delete(id);
        // No answer in time: the line is as good as dead (a proxy holding a request forever).
        reject(new LineLost(`no reply to ${message.channel} within ${timeout} ms`, true, line.type));
      }, timeout);
      this.meta.set(id, { resolve, reject, timer });
      if (out) line.send([out]);
    });
  }

  /** Gives the meta request `id`, still unanswered, `timeout` ms from now instead of what it had. */
  private rearm(id: string, timeout: number): void {
    const pending = this.meta.get(id);
    if (!pending) return;
    clearTimeout(pending.timer);
    pending.timer = setTimeout(() => {
      this.meta.delete(id);
      pending.reject(new LineLost(`no reply to /meta/connect within ${timeout} ms`, true, this.type));
    }, timeout);
  }

  /** The outgoing extensions' version of `message`; null when one of them dropped it. */
  outgoing(message: Message): Message | null {
    return runExtensions(this.extensions, 'outgoing', message);
  }

  // ------------------------------------------------------------------ receiving

  /** What the line brings: replies to meta requests, replies the outbox awaits, advice, deliveries. */
  private receive(messages: Message[]): void {
    for (const raw of messages) {
      const message = runExtensions(this.extensions, 'incoming', raw);
      if (message === null) continue;
      const id = message.id === undefined ? undefined : String(message.id);
      const pending = id === undefined ? undefined : this.meta.get(id);
      if (pending) {
        this.meta.delete(id!);
        clearTimeout(pending.timer);
        pending.resolve(message);
        continue;
      }
      if (this.outbox.answer(id, message)) continue;
      if (message.channel === '/meta/unknown' && message.successful === false && this.clientId === undefined) {
        // The handshake's frame refused whole (past limits the server had not told yet): no reply
        // names the handshake, which fails now rather than at its timeout, and goes again alone.
        for (const [key, waiting] of this.meta) {
          this.meta.delete(key);
          clearTimeout(waiting.timer);
          waiting.resolve(message);
        }
        continue;
      }
      if (message.channel.startsWith('/meta/')) {
        if (message.advice) this.takeAdvice(message, message.channel === '/meta/connect' && this.type !== undefined && isStreamedConnectionType(this.type));
        continue;
      }
      // A delivery; or the note of a position the session was excluded from, which carries none.
      if (message.data !== undefined || message.ext?.skip === true) this.subscriptions.deliver(message);
    }
  }

  /** `keepAlive`: the advice answers the connect of a streamed type (see `keepAlive`). */
  private takeAdvice(message: Message, keepAlive = false): void {
    const advice = message.advice;
    if (!advice || typeof advice !== 'object') return;
    if (advice.reconnect === 'retry' || advice.reconnect === 'handshake' || advice.reconnect === 'none') this.advice.reconnect = advice.reconnect;
    if (keepAlive) {
      if (typeof advice.interval === 'number') this.keepAlive = advice.interval;
      return;
    }
    if (typeof advice.interval === 'number') this.advice.interval = advice.interval;
    if (typeof advice.timeout === 'number') this.advice.timeout = advice.timeout;
  }

  private setState(state: State, reason: string, error?: ClientError): void {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    // The line was lost, and maybe messages with it: the subscriptions ask for them again.
    if (previous === 'connected' && state === 'connecting') this.subscriptions.lineLost();
    this.events.state({ state, previous, reason, transport: this.type, ...(error ? { error } : {}) });
  }
}
