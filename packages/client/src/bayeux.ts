/**
 * The Bayeux machine: one session with the server over one transport at a time.
 *
 * Life of a session (Bayeux §Handshake, §Connect, and the server's advice):
 *   handshake (over websocket when it opens, else long-polling, else callback-polling)
 *   → pick the connection type: our order ∩ the server's `supportedConnectionTypes`
 *   → /meta/connect with `advice.timeout: 0` (answered at once) → connected
 *   → (streamed types) open the push line → re-subscribe what is wanted → send what waited
 *   → /meta/connect again after each reply, `advice.interval` later, until told otherwise.
 * A lost line goes back to `connecting` and retries with jittered backoff; `reconnect:
 * "handshake"` (unknown session) starts over with a new session and re-subscribes, asking the
 * server to replay what was missed (`ext.recover`) from the last position seen on each channel.
 * A line that dies under a live session (a cut with FIN or RST, or a silence longer than the
 * server's hold plus `lineTimeout`) may have swallowed deliveries the server took as written: the
 * same session re-subscribes with `ext.recover` too, and the server replays them.
 */
import { STREAMED_CONNECTION_TYPES, asPosition, isStreamedConnectionType, isWildcard, matches, type Advice, type ConnectionType, type Message, type Position } from '@perihelion/protocol';
import { backoff } from './backoff.js';
import type { BackendEvents } from './client.js';
import { ClientError } from './errors.js';
import { CallbackPolling } from './transports/callback-polling.js';
import { LongPolling } from './transports/long-polling.js';
import { EventSourceTransport, HttpStreamingTransport } from './transports/stream.js';
import { Http, type Environment, type Transport, type TransportContext } from './transports/transport.js';
import { WebSocketTransport } from './transports/websocket.js';

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

export type { Position };

export interface RecoveryOutcome {
  /** Whether every channel recovered without loss; false: the application must reload its state. */
  recovered: boolean;
  channels: Record<string, boolean>;
}

export interface SubscribeOutcome {
  /** Undefined on a first subscription (nothing to recover). */
  recovered: boolean | undefined;
}

export interface Extension {
  /** Sees every message before it is sent; return null to drop it. */
  outgoing?(message: Message): Message | null;
  /** Sees every message from the server before the client acts on it; return null to drop it. */
  incoming?(message: Message): Message | null;
}

export interface ResolvedOptions {
  transports: ConnectionType[];
  timeout: number;
  /** Silence allowed on a line beyond the server's hold before it is taken for dead. */
  lineTimeout: number;
  openTimeout: number;
  streamTimeout: number;
  minReconnectDelay: number;
  maxReconnectDelay: number;
  maxQueued: number;
  /** Whether JSONP may be tried: the page is on another origin, or the application listed it. */
  callbackPolling: boolean;
  token: string | (() => string | undefined | Promise<string | undefined>) | undefined;
  headers: Record<string, string>;
  env: Environment;
}

type Kind = 'publish' | 'request' | 'subscribe' | 'unsubscribe';

interface Outgoing {
  message: Message & { id: string };
  kind: Kind;
  timeout: number;
  settle(reply: Message | ClientError): void;
  timer?: ReturnType<typeof setTimeout>;
}

interface Pending {
  resolve(reply: Message): void;
  reject(error: LineLost | ClientError): void;
  timer: ReturnType<typeof setTimeout>;
}

interface PatternState {
  status: 'wanted' | 'sending' | 'active';
  /**
   * Active on the server, but the line it was delivered on died: what that line swallowed is
   * asked for again once connected, by a subscribe with `ext.recover` on the same session
   * ("due"), which the server answers like a first one, replaying from the positions ("sent").
   */
  resync?: 'due' | 'sent' | undefined;
  /** The `ext.recover` of the subscribe on its way, if it carries one. */
  recover?: Record<string, Position> | undefined;
  waiters: { resolve(outcome: SubscribeOutcome): void; reject(error: ClientError): void }[];
  outcome: SubscribeOutcome;
}

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

/** Types that can carry a handshake (the streamed ones need a session first). */
const HANDSHAKE_TYPES: readonly ConnectionType[] = ['websocket', 'long-polling', 'callback-polling'];

export class Bayeux {
  state: State = 'disconnected';
  clientId: string | undefined;
  type: ConnectionType | undefined;
  readonly sharing = 'off' as const;
  private line: Transport | null = null;
  /**
   * The server's advice for the session: `interval` is the pause between connects (and the floor
   * of the reconnection backoff), `timeout` the longest the server holds a connect.
   */
  private advice: Required<Pick<Advice, 'reconnect' | 'interval' | 'timeout'>> = { reconnect: 'retry', interval: 0, timeout: 30_000 };
  /**
   * The pause between the connects of a streamed type. The server answers those at once and
   * advises `interval: <its hold>, timeout: 0`: they only keep the session alive while the stream
   * carries the messages, so that interval paces them and is no floor for reopening a lost line.
   */
  private keepAlive: number | undefined;
  private readonly failed = new Set<ConnectionType>();
  private readonly outbox: Outgoing[] = [];
  private readonly inflight = new Map<string, Outgoing>();
  private readonly meta = new Map<string, Pending>();
  private readonly patterns = new Map<string, PatternState>();
  private readonly positions = new Map<string, Position>();
  private readonly extensions: Extension[] = [];
  private readonly http: Http | undefined;
  private seq = 0;
  private attempts = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The step the timer will take. */
  private next: 'handshake' | 'connect' | undefined;
  /**
   * Bumped whenever the next step is decided (a handshake, a connect, a scheduled retry, a stop):
   * a step still awaiting a reply from before is stale and drops what it learns.
   */
  private turn = 0;
  private flushQueued = false;
  private batchDepth = 0;
  /** Deliveries are dropped from a gap until the new session has re-subscribed. */
  private dropping = false;
  private stopped = true;
  private starting: { promise: Promise<void>; resolve(): void; reject(error: ClientError): void } | null = null;

  constructor(
    private readonly url: string,
    private readonly options: ResolvedOptions,
    private readonly events: BackendEvents,
  ) {
    const fetchFn = options.env.fetch;
    const g = globalThis as unknown as { addEventListener?: (type: string, listener: () => void) => void; WorkerGlobalScope?: unknown };
    // Browsers (pages and workers) keep cookies themselves; elsewhere Http keeps them.
    const browser = options.env.document !== undefined || typeof g.WorkerGlobalScope === 'function';
    this.http = fetchFn ? new Http(fetchFn, browser, options.headers) : undefined;
    if (browser && typeof g.addEventListener === 'function') {
      // The browser knows before any timeout does: a line kept through an outage may be dead
      // without a word (a WebSocket behind a NAT that forgot it), so it is dropped at once and
      // the first attempt is made as soon as the network is back, not after the backoff.
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
    this.extensions.push(extension);
    return () => {
      const at = this.extensions.indexOf(extension);
      if (at !== -1) this.extensions.splice(at, 1);
    };
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
      this.attempts = 0;
      this.setState('connecting', 'connect');
      void this.handshake();
    }
    return promise;
  }

  // ------------------------------------------------------------------ session

  private async handshake(): Promise<void> {
    clearTimeout(this.timer);
    const turn = ++this.turn;
    if (this.stopped) return;
    this.closeLine();
    this.clientId = undefined;
    const type = this.handshakeType();
    if (!type) return this.stop('no transport', new ClientError('no-transport', `no usable transport: offered ${this.options.transports.join(', ')}, but this environment lacks what they need (pass WebSocket, fetch or EventSource in the options)`));
    this.type = type;
    this.openLine(type);
    let token: string | undefined;
    try {
      token = typeof this.options.token === 'function' ? await this.options.token() : this.options.token;
    } catch {
      token = undefined;
    }
    if (turn !== this.turn) return;
    const message: Message = {
      channel: '/meta/handshake',
      version: '1.0',
      minimumVersion: '1.0',
      supportedConnectionTypes: this.usableTypes(),
      advice: { timeout: 60_000, interval: 0 },
      ...(token !== undefined ? { ext: { token } } : {}),
    };
    let reply: Message;
    try {
      reply = await this.request(message, this.options.timeout);
    } catch (error) {
      if (turn !== this.turn) return;
      this.closeLine();
      // A line that never worked is blocked here (a refused upgrade, a cross-origin POST without
      // CORS), and so is a WebSocket that opens but cannot carry a handshake (a proxy that
      // accepts and drops it): negotiate down at once.
      if (error instanceof LineLost && error.type !== undefined && (!error.opened || error.type === 'websocket')) {
        this.failed.add(error.type);
        // The streamed types send by POST too: if a POST cannot get through, neither can they.
        if (error.type === 'long-polling') for (const t of STREAMED_CONNECTION_TYPES) this.failed.add(t);
        if (this.usableTypes().length > 0) return this.schedule('handshake', 0);
      }
      return this.retry('handshake', `network: ${(error as Error).message}`);
    }
    if (turn !== this.turn) return;
    this.keepAlive = undefined;
    this.takeAdvice(reply);
    if (reply.successful !== true || typeof reply.clientId !== 'string') {
      const error = ClientError.fromReply(reply);
      if (reply.advice?.reconnect === 'none') return this.stop('handshake refused', new ClientError('handshake-denied', error.message, error.bayeux));
      return this.retry('handshake', `server: ${reply.error ?? 'handshake refused'}`);
    }
    this.clientId = reply.clientId;
    const offered = Array.isArray(reply.supportedConnectionTypes) ? reply.supportedConnectionTypes : [type];
    const chosen = this.usableTypes().find((t) => offered.includes(t) && (t !== 'callback-polling' || type === 'callback-polling'));
    if (chosen === undefined) {
      return this.stop('no transport', new ClientError('no-transport', `the server offers ${offered.join(', ')}; this client can use ${this.usableTypes().join(', ')}`));
    }
    if (chosen !== type) {
      // Keep the WebSocket only if it is the chosen type; HTTP lines are cheap to replace.
      this.closeLine();
      this.type = chosen;
    }
    // Subscriptions and replies of the old session are void; what waited is re-sent.
    for (const pattern of this.patterns.values()) {
      pattern.status = 'wanted';
      pattern.resync = undefined;
    }
    for (let i = this.outbox.length - 1; i >= 0; i--) {
      if (this.outbox[i]!.kind === 'subscribe' || this.outbox[i]!.kind === 'unsubscribe') this.outbox.splice(i, 1);
    }
    void this.connectOnce();
  }

  private async connectOnce(): Promise<void> {
    clearTimeout(this.timer);
    const turn = ++this.turn;
    if (this.stopped || this.clientId === undefined || this.type === undefined) return;
    const line = this.line ?? this.openLine(this.type);
    const first = this.state !== 'connected';
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
      reply = await this.request(message, first || streamed ? this.options.timeout : this.advice.timeout + this.options.lineTimeout);
    } catch (error) {
      if (turn !== this.turn) return;
      // The state first, so that it carries this reason rather than the closing line's.
      if (this.state === 'connected') this.setState('connecting', `network: ${(error as Error).message}`);
      this.closeLine();
      if (error instanceof LineLost && !error.opened && error.type === 'websocket') {
        // The socket that worked before cannot be opened again: renegotiate from scratch.
        this.failed.add('websocket');
        this.abandonSession();
        return this.retry('handshake', `network: ${error.message}`);
      }
      return this.retry('connect', `network: ${(error as Error).message}`);
    }
    if (turn !== this.turn) return;
    this.takeAdvice(reply, streamed);
    if (reply.successful !== true) {
      const reconnect = reply.advice?.reconnect ?? this.advice.reconnect;
      if (reconnect === 'none') return this.stop(`server: ${reply.error ?? 'connect refused'}`, ClientError.fromReply(reply));
      if (reconnect === 'handshake') return this.retry('handshake', `server: ${reply.error ?? 'session unknown'}`);
      return this.retry('connect', `server: ${reply.error ?? 'connect failed'}`);
    }
    if (first) {
      if (streamed && line.openStream) {
        const opened = await this.openStream(line);
        if (opened === 'buffered') return;
        if (opened === 'failed' || turn !== this.turn) return;
      }
      this.attempts = 0;
      this.setState('connected', 'connect');
      this.starting?.resolve();
      this.starting = null;
      this.sendWanted();
      this.scheduleFlush();
    }
    if (reply.advice?.reconnect === 'none') return this.stop('server: reconnect none');
    if (reply.advice?.reconnect === 'handshake') return this.retry('handshake', 'server: advice handshake');
    this.schedule('connect', Math.max(0, streamed ? (this.keepAlive ?? this.advice.interval) : this.advice.interval));
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
      this.failed.add(line.type);
      this.closeLine();
      const next = this.usableTypes().find((t) => !isStreamedConnectionType(t) && t !== 'websocket');
      if (next === undefined) {
        this.retry('handshake', `network: the ${line.type} stream is buffered by an intermediary`);
        return 'buffered';
      }
      this.type = next;
      void this.connectOnce();
    }
    return outcome;
  }

  private retry(step: 'handshake' | 'connect', reason: string): void {
    if (this.stopped) return;
    // The state first, so that it carries this reason rather than the closing line's.
    if (this.state !== 'connecting') this.setState('connecting', reason);
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
  private rehandshake(reason: string): void {
    if (this.stopped || this.dropping) return;
    this.dropping = true;
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
    for (const item of [...this.outbox.splice(0), ...this.inflight.values()]) item.settle(failure);
    this.inflight.clear();
    for (const pattern of this.patterns.values()) {
      pattern.status = 'wanted';
      for (const waiter of pattern.waiters.splice(0)) waiter.reject(failure);
    }
    this.starting?.reject(failure);
    this.starting = null;
    this.setState('disconnected', reason, error);
  }

  async disconnect(): Promise<void> {
    if (this.stopped) return;
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

  private usableTypes(): ConnectionType[] {
    const env = this.options.env;
    return this.options.transports.filter((type) => {
      if (this.failed.has(type)) return false;
      if (type === 'websocket') return env.WebSocket !== undefined;
      if (type === 'eventsource') return env.EventSource !== undefined && this.http !== undefined;
      if (type === 'callback-polling') return env.document !== undefined && this.options.callbackPolling;
      return this.http !== undefined;
    });
  }

  private handshakeType(): ConnectionType | undefined {
    let usable = this.usableTypes();
    if (usable.length === 0 && this.failed.size > 0) {
      // Everything failed once (offline?): forget and try again from the top, with backoff.
      this.failed.clear();
      usable = this.usableTypes();
    }
    const first = usable.find((t) => HANDSHAKE_TYPES.includes(t) || isStreamedConnectionType(t));
    if (first === undefined) return undefined;
    // Streamed types handshake over a plain POST, then switch.
    return isStreamedConnectionType(first) ? 'long-polling' : first;
  }

  private openLine(type: ConnectionType): Transport {
    this.closeLine();
    const context: TransportContext = {
      url: this.url,
      env: this.options.env,
      http: this.http!,
      host: {
        receive: (messages) => {
          if (this.line === line) this.receive(messages);
        },
        lost: (reason, opened) => {
          if (this.line === line) this.lineLost(reason, opened, type);
        },
      },
    };
    const line: Transport =
      type === 'websocket'
        ? new WebSocketTransport(context, this.options.openTimeout)
        : type === 'eventsource'
          ? new EventSourceTransport(context)
          : type === 'http-streaming'
            ? new HttpStreamingTransport(context)
            : type === 'callback-polling'
              ? new CallbackPolling(context)
              : new LongPolling(context);
    this.line = line;
    return line;
  }

  private closeLine(): void {
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
    // dropped between two connects) reconnect now.
    if (!waiting) this.retry('connect', `network: ${reason}`);
  }

  /** Requests on a dead line: meta requests fail; publishes and subscribes wait for the next line. */
  private abandonRequests(reason: string, opened: boolean, type: ConnectionType): void {
    for (const [id, pending] of this.meta) {
      this.meta.delete(id);
      clearTimeout(pending.timer);
      pending.reject(new LineLost(reason, opened, type));
    }
    const requeue = [...this.inflight.values()];
    this.inflight.clear();
    for (const item of requeue) clearTimeout(item.timer);
    for (const item of requeue) {
      if (item.kind === 'subscribe') {
        const pattern = this.patterns.get(item.message.subscription as string);
        if (pattern?.status === 'sending') pattern.status = 'wanted';
        else if (pattern?.resync === 'sent') pattern.resync = 'due';
      } else if (item.kind !== 'unsubscribe') {
        // Sent again with the same id after reconnecting: the server drops a publish it already has.
        this.outbox.unshift(item);
      }
    }
    this.outbox.sort((a, b) => Number(a.message.id) - Number(b.message.id));
    if (this.state === 'connected' && !this.stopped) this.setState('connecting', `network: ${reason}`);
  }

  // ------------------------------------------------------------------ sending

  private nextId(): string {
    return String(++this.seq);
  }

  /** Sends one meta message (handshake, connect, disconnect) at once and awaits its reply. */
  private request(message: Message, timeout: number): Promise<Message> {
    const line = this.line;
    if (!line) return Promise.reject(new LineLost('no line', false, this.type));
    const id = this.nextId();
    const out = this.outgoing({ ...message, id });
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

  private outgoing(message: Message): Message | null {
    let out: Message | null = message;
    for (const extension of this.extensions) {
      if (out === null) break;
      if (extension.outgoing) out = extension.outgoing(out);
    }
    return out;
  }

  private enqueue(kind: Kind, message: Message, timeout: number, settle: (reply: Message | ClientError) => void): void {
    const item: Outgoing = { kind, message: { ...message, id: this.nextId() }, timeout, settle };
    if (kind === 'publish' || kind === 'request') {
      const queued = this.outbox.filter((o) => o.kind === 'publish' || o.kind === 'request').length;
      if (queued >= this.options.maxQueued) {
        return settle(new ClientError('queue-full', `${queued} messages are already waiting to be sent (maxQueued); this one was not queued`));
      }
    }
    this.outbox.push(item);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushQueued || this.batchDepth > 0 || this.state !== 'connected') return;
    this.flushQueued = true;
    // Everything issued in the same turn leaves in one request (or one frame).
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    const line = this.line;
    if (this.state !== 'connected' || !line || this.clientId === undefined || this.batchDepth > 0) return;
    const batch: Message[] = [];
    for (const item of this.outbox.splice(0)) {
      const out = this.outgoing({ ...item.message, clientId: this.clientId });
      if (!out) {
        item.settle(new ClientError('bayeux', `${item.message.channel}: dropped by an outgoing extension`, ''));
        continue;
      }
      this.inflight.set(item.message.id, item);
      item.timer = setTimeout(() => {
        this.inflight.delete(item.message.id);
        if (item.kind === 'subscribe') this.subscribeTimedOut(item.message.subscription as string, item.timeout);
        else item.settle(new ClientError('timeout', `no reply to ${item.message.channel} within ${item.timeout} ms`));
      }, item.timeout);
      batch.push(out);
    }
    if (batch.length > 0) line.send(batch);
  }

  /**
   * Holds every message issued while `fn` runs and sends them in one request. When `fn` returns
   * a promise the batch lasts until it settles, so `fn` must not wait for replies to its own
   * messages (they are sent only after it).
   */
  batch<T>(fn: () => T): T {
    this.batchDepth++;
    let result: T;
    try {
      result = fn();
    } catch (error) {
      this.endBatch();
      throw error;
    }
    if (result instanceof Promise) {
      result.then(
        () => this.endBatch(),
        () => this.endBatch(),
      );
    } else this.endBatch();
    return result;
  }

  private endBatch(): void {
    this.batchDepth--;
    this.scheduleFlush();
  }

  publish(channel: string, data: unknown, ext: Record<string, unknown> | undefined): Promise<Message> {
    return new Promise((resolve, reject) => {
      this.enqueue('publish', { channel, data, ...(ext ? { ext } : {}) }, this.options.timeout, (reply) => {
        if (reply instanceof ClientError) reject(reply);
        else if (reply.successful === false) reject(ClientError.fromReply(reply));
        else resolve(reply);
      });
    });
  }

  /** A service call: the publish acknowledgement, then a reply with the same id carrying data. */
  call(channel: string, data: unknown, timeout: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.enqueue('request', { channel, data }, timeout, (reply) => {
        if (reply instanceof ClientError) reject(reply);
        else if (reply.successful === false) reject(ClientError.fromReply(reply));
        else resolve(reply.data);
      });
    });
  }

  // ------------------------------------------------------------------ subscriptions

  /** The server-side subscription to `pattern` (one per pattern, whatever the number of handlers). */
  need(pattern: string): Promise<SubscribeOutcome> {
    const existing = this.patterns.get(pattern);
    if (existing?.status === 'active') return Promise.resolve(existing.outcome);
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
    // Positions of channels no other pattern covers would make a later subscribe replay stale history.
    for (const channel of [...this.positions.keys()]) {
      if (![...this.patterns.keys()].some((p) => matches(p, channel))) this.positions.delete(channel);
    }
    if (!state || state.status === 'wanted' || this.state !== 'connected') return Promise.resolve();
    return new Promise((resolve) => {
      this.enqueue('unsubscribe', { channel: '/meta/unsubscribe', subscription: pattern }, this.options.timeout, () => resolve());
    });
  }

  private sendWanted(): void {
    if (this.state !== 'connected') return;
    for (const [pattern, state] of this.patterns) {
      const resync = state.status === 'active' && state.resync === 'due';
      if (state.status !== 'wanted' && !resync) continue;
      const recover = this.recoverFor(pattern);
      state.recover = recover;
      if (resync) {
        // Without positions (a server without history) there is nothing to ask for again.
        state.resync = recover ? 'sent' : undefined;
        if (!recover) continue;
      } else state.status = 'sending';
      const message: Message = { channel: '/meta/subscribe', subscription: pattern, ...(recover ? { ext: { recover } } : {}) };
      this.enqueue('subscribe', message, this.options.timeout, (reply) => this.subscribed(pattern, reply, recover));
    }
    this.dropping = false;
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
      // Released while the subscribe was on its way: the server must not keep it.
      if (!(reply instanceof ClientError) && reply.successful === true && this.state === 'connected') {
        this.enqueue('unsubscribe', { channel: '/meta/unsubscribe', subscription: pattern }, this.options.timeout, () => {});
      }
      return;
    }
    if (reply instanceof ClientError) return this.patternFailed(pattern, reply);
    if (reply.successful !== true && reply.advice?.reconnect === 'handshake') {
      // The session ended under the subscribe (it expired during a cut): not a refusal. A new
      // session subscribes everything again, recovering from the positions.
      state.status = 'wanted';
      state.resync = undefined;
      return this.retry('handshake', `server: ${reply.error ?? 'session unknown'}`);
    }
    if (reply.successful !== true) return this.patternFailed(pattern, ClientError.fromReply(reply));
    const ext = (reply.ext ?? {}) as { recovered?: Record<string, unknown>; positions?: Record<string, unknown> };
    const positions = ext.positions ?? {};
    let outcome: RecoveryOutcome | undefined;
    if (recover) {
      const channels: Record<string, boolean> = {};
      for (const channel of Object.keys(recover)) {
        // A server without history ignores ext.recover: nothing was replayed, and nothing can be promised.
        channels[channel] = ext.recovered?.[channel] === true;
        if (!channels[channel]) this.positions.delete(channel);
      }
      outcome = { recovered: Object.values(channels).every(Boolean), channels };
    }
    for (const [channel, value] of Object.entries(positions)) {
      const position = asPosition(value);
      const known = this.positions.get(channel);
      // Only a channel with nothing seen (or a new epoch) starts from the reply: replays follow it.
      if (position && (!known || known.epoch !== position.epoch)) this.positions.set(channel, position);
    }
    state.status = 'active';
    state.resync = undefined;
    state.recover = undefined;
    state.outcome = { recovered: outcome?.recovered };
    for (const waiter of state.waiters.splice(0)) waiter.resolve(state.outcome);
    if (outcome) this.events.recovery(pattern, outcome);
  }

  /**
   * No reply to a subscribe in time. A first subscription fails (its caller learns it); one the
   * client is restoring (after a reconnection, nobody awaiting it) is not given up on a slow or
   * dying line: it is sent again, and a dead line is found by the connect's deadline meanwhile.
   */
  private subscribeTimedOut(pattern: string, timeout: number): void {
    const state = this.patterns.get(pattern);
    if (state?.resync === 'sent' || (state && state.waiters.length === 0 && state.status === 'sending')) {
      if (state.resync === 'sent') state.resync = 'due';
      else state.status = 'wanted';
      return this.sendWanted();
    }
    this.patternFailed(pattern, new ClientError('timeout', `no reply to the subscription within ${timeout} ms`));
  }

  private patternFailed(pattern: string, error: ClientError): void {
    const state = this.patterns.get(pattern);
    if (!state) return;
    this.patterns.delete(pattern);
    const waiters = state.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(error);
    if (waiters.length === 0) this.events.refused(pattern, error);
  }

  // ------------------------------------------------------------------ receiving

  private receive(messages: Message[]): void {
    for (const raw of messages) {
      let message: Message | null = raw;
      for (const extension of this.extensions) {
        if (message === null) break;
        if (extension.incoming) message = extension.incoming(message);
      }
      if (message === null) continue;
      const id = message.id === undefined ? undefined : String(message.id);
      const pending = id === undefined ? undefined : this.meta.get(id);
      if (pending) {
        this.meta.delete(id!);
        clearTimeout(pending.timer);
        pending.resolve(message);
        continue;
      }
      const item = id === undefined ? undefined : this.inflight.get(id);
      if (item && message.channel === item.message.channel && (message.successful !== undefined || message.data !== undefined)) {
        // A service call gets its acknowledgement (no data) and then its answer (data).
        if (item.kind === 'request' && message.data === undefined && message.successful !== false) continue;
        this.inflight.delete(id!);
        clearTimeout(item.timer);
        item.settle(message);
        continue;
      }
      if (message.channel.startsWith('/meta/')) {
        if (message.advice) this.takeAdvice(message, message.channel === '/meta/connect' && this.type !== undefined && isStreamedConnectionType(this.type));
        continue;
      }
      if (message.data !== undefined) this.deliver(message);
    }
  }

  private deliver(message: Message): void {
    if (this.dropping) return;
    const position = asPosition(message.ext?.position);
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
          return this.rehandshake(`gap on ${message.channel}: ${last.offset + 1}…${position.offset - 1} missing`);
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
    this.events.deliver(message);
  }

  /**
   * Whether a subscribe not yet answered will have the server replay `channel` from its last
   * position: one still to be sent (it will carry that position) or one sent with it.
   */
  private recovering(channel: string): boolean {
    for (const [pattern, state] of this.patterns) {
      if (pattern !== channel && !(isWildcard(pattern) && matches(pattern, channel))) continue;
      if (state.status === 'wanted' || state.resync === 'due') return true;
      if ((state.status === 'sending' || state.resync === 'sent') && state.recover?.[channel] !== undefined) return true;
    }
    return false;
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
    if (previous === 'connected' && state === 'connecting') {
      // The line was lost. Whatever the server wrote to it and the client never read (frames on
      // a dying socket, a poll's answer cut in flight, a stream's last bytes) counts as delivered
      // on the server: the subscriptions ask for it again from their last positions once
      // connected (a new session re-subscribes everything anyway).
      for (const pattern of this.patterns.values()) if (pattern.status === 'active') pattern.resync = 'due';
    }
    this.events.state({ state, previous, reason, transport: this.type, ...(error ? { error } : {}) });
  }

  /**
   * Positions seen elsewhere (a tab taking over the shared connection seeds its new one with
   * what it was relayed), so that the first subscribes recover from them. Known channels keep theirs.
   */
  seedPositions(positions: Iterable<[string, Position]>): void {
    for (const [channel, position] of positions) if (!this.positions.has(channel)) this.positions.set(channel, position);
  }
}
