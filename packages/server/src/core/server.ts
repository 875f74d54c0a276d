/**
 * The Bayeux server core: one entry point, `process(batch, context)`, shared by every transport.
 *
 * Each message passes, in this fixed order: shape check → incoming extensions → the handler
 * for its channel (the five meta channels, /service, or a broadcast publish) → outgoing
 * extensions on the reply. A refusal anywhere becomes an unsuccessful reply carrying a Bayeux
 * error string; nothing a client sends can throw out of `process`.
 */
import { EventEmitter } from 'node:events';
import {
  BAYEUX_VERSION,
  META,
  bayeuxError,
  channelProblem,
  checkMessage,
  isMeta,
  isService,
  isStreamedConnectionType,
  isWildcard,
  serialiseExtLast,
  subscriptionList,
  type Advice,
  type ConnectionType,
  type Message,
  type Position,
} from '@perihelion/protocol';
import type { Engine, EngineHost, Publication } from '../engine/engine.js';
import type { HistoryPage, HistoryQuery, HistorySettings } from '../engine/history.js';
import { MemoryEngine } from '../engine/memory.js';
import { retentionResolver } from '../engine/retention.js';
import { ExtensionPipeline, type Extension, type ExtensionContext } from '../extensions/pipeline.js';
import { PerihelionError } from '../errors.js';
import { resolveOptions, type ResolvedOptions, type ServerOptions } from '../options.js';
import type { ProcessContext } from './contract.js';
import { AuthenticationError, type Authenticator } from '../security/authenticate.js';
import { JwtVerifier, jwtAuthenticator } from '../security/jwt.js';
import { SecurityPolicy } from '../security/policy.js';
import { randomHex } from '../security/random.js';
import { speaksFor } from '../security/session-binding.js';
import { KeyedLimiter, TokenBucket } from '../security/rate-limit.js';
import { Acknowledgement } from '../extensions/ack.js';
import { ListenerRegistry, type Listener } from './listeners.js';
import { RecentIds } from './recent-ids.js';
import { readRecoverRequests } from './recovery.js';
import { Session, type Release, type SessionHost } from './session.js';
import { TimerWheel } from './timer-wheel.js';

export type DisconnectReason = 'client' | 'expired' | 'server' | 'shutdown' | 'token-expired' | 'abuse' | 'slow-consumer';

export interface ServerEvents {
  handshake: [session: Session];
  subscribe: [session: Session, channel: string];
  unsubscribe: [session: Session, channel: string];
  publish: [message: Message, session: Session | null];
  disconnect: [session: Session, reason: DisconnectReason];
  /** A failure inside the server (a listener or hook that threw, an engine error); it keeps serving. */
  error: [error: unknown];
}

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
}

export interface PublishOptions {
  ext?: Record<string, unknown>;
}

/** A page of a channel's history, as the server API gives it. */
export interface HistoryResult {
  /** The channel's current epoch and latest offset; null when nothing was published on it yet. */
  position: Position | null;
  /** Messages oldest first, each with `ext.position`. */
  messages: Message[];
  /** False when `since` could not be honoured (another epoch, or messages after it are gone). */
  complete: boolean;
}

type Reply = Message;

/** Publishes refused in a row for exceeding the rate before the session is ended as abusive. */
const MAX_REFUSED_PUBLISHES = 100;

/**
 * While the server drains (SIGTERM, `close()`), every /meta/connect, the held ones at once and any
 * that arrives meanwhile, is answered `successful: true` with advice `{reconnect: "retry",
 * interval: DRAIN_RECONNECT_INTERVAL}`: connect again in a second. A client that still has
 * messages waiting collects them with that connect (the drain waits for it); once this server is
 * gone, the connect fails and the client retries it with its own backoff until the restarted
 * server (or another node) answers its clientId with 402 and `reconnect: "handshake"`, and it
 * starts a new session there. Checked against the clients' source (npm cometd 9.0.0, faye 1.4.3):
 *
 * - Not `reconnect: "handshake"` on a successful reply: CometD accepts only "retry" or "none" there
 *   and throws "Unrecognized advice action handshake" (cometd/Client.js:1181-1192). The reply has
 *   been matched, nothing is scheduled, and the WebSocket's 1001 close then finds no request
 *   outstanding to fail (cometd/WebSocketTransport.js:346-385): the client never connects again.
 * - "retry": CometD connects again after advice.interval (Client.js:1183-1185, 576-581); a connect
 *   that fails (refused, socket closed) is retried with a backoff growing by 1 s
 *   (Client.js:1205-1213, 1010-1011, 1051-1052), and the 402 makes it handshake
 *   (Client.js:1194-1198, 1023-1027, 1048-1049). Its WebSocket transport stays in use after the
 *   1001 close because it had connected once (WebSocketTransport.js:353). Faye connects again
 *   after advice.interval (faye/src/protocol/client.js:166, 373-380), resends a failed connect every
 *   `retry` seconds (faye/src/protocol/dispatcher.js:147-176; on a closed WebSocket
 *   faye/src/transport/web_socket.js:67-86), and handshakes on the 402's advice
 *   (client.js:356-365), subscribing again by itself (client.js:121).
 * - An unsuccessful reply with `reconnect: "handshake"` would also bring both clients back
 *   (Client.js:1194-1198; faye client.js:356-365), but it would abandon the messages still waiting
 *   here, and CometD would report the connection as failed while the server is merely draining.
 *
 * A handshake during the drain (or after it, until the listener closes) is refused without advice.
 * CometD then takes the action "handshake" and tries again with its backoff, 0 s, 1 s, 2 s, …
 * (Client.js:1130-1136, 980-1002, 1048-1049); Faye tries again every `retry` seconds, 5 by default
 * (client.js:124-128), until the restarted server takes it. Not with `reconnect: "handshake"`: on
 * a refused handshake that makes Faye start a second handshake of its own (client.js:356-365, 373-380,
 * 141-146) and, once that one succeeds, drop the first one's retry (client.js:98), and with it
 * the subscribe or publish the application made before its first handshake: that subscription is
 * never made on the restarted server.
 */
const DRAIN_RECONNECT_INTERVAL = 1000;

export class BayeuxServer implements EngineHost, SessionHost {
  readonly options: ResolvedOptions;
  readonly engine: Engine;
  readonly extensions = new ExtensionPipeline();
  readonly wheel = new TimerWheel(100, (error) => this.reportError(error));
  readonly policy: SecurityPolicy;
  private readonly authenticator: Authenticator | null;
  private readonly handshakeLimiter: KeyedLimiter;
  private readonly sessionsPerAddress = new Map<string, number>();

  private readonly sessions = new Map<string, Session>();
  private readonly listeners = new ListenerRegistry();
  private readonly events = new EventEmitter();
  /** Sessions with something to write this turn (each once: see Session.flushPending). */
  private dirty: Session[] = [];
  private flushScheduled = false;
  private readonly ready: Promise<void>;
  private closed = false;
  private draining = false;
  private closing: Promise<void> | null = null;
  private started = false;
  private readonly counters = { messagesIn: 0, published: 0, deliveries: 0, queueDrops: 0, slowConsumers: 0, duplicatePublishes: 0, replayed: 0, resent: 0 };
  readonly historySettings: HistorySettings;

  constructor(options: ServerOptions = {}) {
    this.options = resolveOptions(options);
    this.engine = options.engine ?? new MemoryEngine();
    this.historySettings = {
      retentionFor: retentionResolver(this.options.history, { size: this.options.historySize, ttl: this.options.historyTtl }),
      maxChannels: this.options.maxHistoryChannels,
      maxChars: this.options.maxHistoryBytes,
    };
    const verifier = options.jwt ? new JwtVerifier(options.jwt) : null;
    this.authenticator = options.authenticate ?? (verifier ? jwtAuthenticator(verifier) : null);
    this.policy = new SecurityPolicy({ open: this.options.open, rules: options.channels ?? [], authorize: options.authorize, subscriptionTokens: verifier });
    this.handshakeLimiter = new KeyedLimiter(this.options.handshakeRate, this.options.handshakeBurst);
    for (const extension of options.extensions ?? []) this.extensions.add(extension);
    this.ready = this.engine.start(this);
    this.ready.then(
      () => (this.started = true),
      (error: unknown) => this.events.emit('error', error),
    );
    // Listener errors are reported through 'error' only if someone listens; never crash the server.
    this.events.on('error', () => {});
  }

  // ---------------------------------------------------------------- public API

  /** Resolves once the engine has started. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  on<E extends keyof ServerEvents>(event: E, listener: (...args: ServerEvents[E]) => void): () => void {
    this.events.on(event, listener as (...args: unknown[]) => void);
    return () => this.events.off(event, listener as (...args: unknown[]) => void);
  }

  addExtension(extension: Extension): () => void {
    return this.extensions.add(extension);
  }

  /** Publishes `data` to every subscriber of `channel` (and the in-process listeners). */
  async publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<void> {
    this.assertOpen();
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot publish to ${JSON.stringify(channel)}: ${problem}`);
    if (isMeta(channel)) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot publish to the meta channel ${channel}`);
    await this.ready;
    const message: Message = { channel, data };
    if (options.ext) {
      // Positions are the engine's to give, whoever publishes.
      const { position: _position, ...ext } = options.ext;
      if (Object.keys(ext).length > 0) message.ext = ext;
    }
    if (isService(channel)) {
      await this.notifyListeners(message, null);
      return;
    }
    await this.broadcast(message, null);
  }

  /**
   * Calls `listener` for every message on channels matching `pattern` (wildcards allowed),
   * including /service messages from clients. Returns a function that removes the listener.
   */
  subscribe(pattern: string, listener: Listener): () => void {
    const problem = channelProblem(pattern, { maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot listen to ${JSON.stringify(pattern)}: ${problem}`);
    return this.listeners.add(pattern, listener);
  }

  /** Sends `data` on `channel` to one session; false when no session has that id. */
  async deliver(clientId: string, channel: string, data: unknown): Promise<boolean> {
    this.assertOpen();
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot deliver on ${JSON.stringify(channel)}: ${problem}`);
    const publication = await this.prepare({ channel, data }, null);
    if (!publication) return false;
    return this.engine.sendTo(clientId, publication);
  }

  /**
   * Reads a channel's history: the latest `limit` messages, or with `since` the messages after
   * that position (oldest first). Null when the channel keeps no history (see `historySize`).
   */
  async history(channel: string, query: HistoryQuery = {}): Promise<HistoryResult | null> {
    const page = await this.historyPage(channel, query);
    if (!page) return null;
    return { position: page.position, messages: page.payloads.map((payload) => JSON.parse(payload) as Message), complete: page.complete };
  }

  /** `history()` with the messages as the serialised bytes subscribers were sent (for the HTTP API). */
  async historyPage(channel: string, query: HistoryQuery = {}): Promise<HistoryPage | null> {
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot read the history of ${JSON.stringify(channel)}: ${problem}`);
    if (query.limit !== undefined && (!Number.isInteger(query.limit) || query.limit < 0)) {
      throw new PerihelionError('ERR_INVALID_ARGUMENT', `history limit must be a non-negative integer, got ${JSON.stringify(query.limit)}`);
    }
    await this.ready;
    if (isMeta(channel) || isService(channel)) return null;
    return this.engine.history(channel, query);
  }

  /** Whether handshakes are authenticated (an authenticator or JWT keys are configured). */
  get authenticates(): boolean {
    return this.authenticator !== null;
  }

  /** Number of configured channel rules. */
  get ruleCount(): number {
    return this.policy.ruleCount;
  }

  /** The live sessions of one authenticated user. */
  sessionsOf(userId: string): Session[] {
    return [...this.sessions.values()].filter((session) => session.identity?.id === userId);
  }

  /**
   * Ends a session on whichever node holds it (with the Redis engine, any node of the cluster),
   * as if its client had sent /meta/disconnect; false when no node knows it.
   */
  async disconnectClient(clientId: string): Promise<boolean> {
    await this.ready;
    return this.engine.endSession(clientId);
  }

  /** Ends every session of one user, on every node; resolves to how many were ended. */
  async disconnectUser(userId: string): Promise<number> {
    await this.ready;
    // All at once: with Redis, the lookups and messages to the owners share the round trips. Every
    // attempt runs to its end before a failure (Redis going away midway) is reported.
    const outcomes = await Promise.allSettled((await this.engine.sessionsOfUser(userId)).map((clientId) => this.engine.endSession(clientId)));
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
    return outcomes.filter((outcome) => outcome.status === 'fulfilled' && outcome.value).length;
  }

  getSession(clientId: string): Session | undefined {
    return this.sessions.get(clientId);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** The running totals alone, without walking the sessions (cheap enough for every scrape). */
  totals(): Readonly<typeof this.counters> {
    return this.counters;
  }

  /** Reports a failure inside the server through the 'error' event; the server keeps serving. */
  reportError(error: unknown): void {
    this.events.emit('error', error);
  }

  stats(): ServerStats {
    const byTransport: Record<string, number> = {};
    for (const session of this.sessions.values()) {
      const key = session.connectionType ?? 'handshaken';
      byTransport[key] = (byTransport[key] ?? 0) + 1;
    }
    return { sessions: this.sessions.size, sessionsByTransport: byTransport, ...this.counters };
  }

  /**
   * Stops the core gracefully. First it drains: no new sessions, no new publishes; every held
   * connect is answered with what it carries and advice to connect again a second later (see
   * DRAIN_RECONNECT_INTERVAL); sessions that still have messages waiting get up to `drainTimeout`
   * ms for their next connect to collect them. Then sessions end and the engine closes.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.draining = true;
    for (const session of this.sessions.values()) session.release('shutdown');
    const deadline = Date.now() + this.options.drainTimeout;
    while (Date.now() < deadline && [...this.sessions.values()].some((session) => session.queue.length > 0)) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    this.closed = true;
    for (const session of [...this.sessions.values()]) {
      session.flush();
      this.endSession(session, 'shutdown');
    }
    this.flushNow();
    this.wheel.stop();
    this.handshakeLimiter.stop();
    await this.ready.catch(() => {});
    await this.engine.close();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The engine has started and the server is not shutting down. */
  get isReady(): boolean {
    return this.started && !this.draining;
  }

  /** Shutting down: finishing what clients are owed, taking nothing new. */
  get isDraining(): boolean {
    return this.draining;
  }

  // ---------------------------------------------------------------- the entry point

  /**
   * Handles one batch of untrusted values and resolves to the serialised replies (and, after a
   * /meta/connect reply, the messages it carries), in order. On a push connection a held
   * /meta/connect is answered later through the connection, so the batch resolves without it.
   */
  async process(batch: readonly unknown[], context: ProcessContext): Promise<string[]> {
    const out: string[] = [];
    if (this.closed) {
      for (const value of batch) {
        // A connect is told to handshake (its session is gone); a handshake gets no advice, as
        // while draining (see DRAIN_RECONNECT_INTERVAL).
        const advice: Advice | undefined = (value as Message | null)?.channel === META.handshake ? undefined : { reconnect: 'handshake', interval: 1000 };
        out.push(JSON.stringify(this.refusal(value, bayeuxError('serverError', [], 'server is shutting down'), advice)));
      }
      return out;
    }
    await this.ready;
    const handshakeAt = batch.findIndex((m) => (m as Message | null)?.channel === META.handshake);
    for (let i = 0; i < batch.length; i++) {
      const value = batch[i];
      this.counters.messagesIn++;
      // Bayeux §4.1.1: a handshake SHOULD be alone in its request, and the server MUST ignore any
      // other message sent with it: not acted on, not answered (neither CometD nor Faye sends one).
      if (handshakeAt !== -1 && i !== handshakeAt) continue;
      try {
        await this.handle(value, context, batch.length, out);
      } catch (error) {
        this.events.emit('error', error);
        out.push(JSON.stringify(this.refusal(value, bayeuxError('serverError'))));
      }
    }
    return out;
  }

  private async handle(value: unknown, context: ProcessContext, batchSize: number, out: string[]): Promise<void> {
    const checked = checkMessage(value);
    if (!checked.ok) {
      const reply: Reply = { channel: checked.channel ?? '/meta/unknown', successful: false, error: checked.error };
      if (checked.id !== undefined) reply.id = checked.id;
      // §3.5: failed replies still carry the clientId they were sent with.
      const clientId = (value as { clientId?: unknown } | null)?.clientId;
      if (typeof clientId === 'string') reply.clientId = clientId;
      out.push(JSON.stringify(reply));
      return;
    }
    const original = checked.message;
    const found = original.clientId !== undefined ? this.sessions.get(original.clientId) : undefined;
    // A session that does not accept this request is as unknown to it as one that never existed.
    const session = found && this.accepts(found, context) ? found : null;
    const extensionContext: ExtensionContext = { session, transport: context };
    const message = await this.extensions.incoming(original, extensionContext);
    if (message === null || message.error !== undefined) {
      const error = message?.error ?? bayeuxError('channelForbidden', [original.channel], 'refused by an extension');
      await this.emitReply({ ...this.reply(original, false), error: String(error) }, extensionContext, out);
      return;
    }
    if (session && context.connection && message.channel !== META.connect) {
      // Faye opens its WebSocket while its connects still go over long-polling, and moves them
      // only once the held one returns. Answering that connect as soon as the client speaks over
      // the socket brings the next one over it, instead of an HTTP request held for `timeout`.
      session.releaseLongPoll();
    }
    switch (message.channel) {
      case META.handshake:
        return this.emitReply(await this.handshake(message, context), extensionContext, out);
      case META.connect:
        return this.connect(message, session, context, batchSize, out);
      case META.subscribe:
        return this.emitReply(await this.subscribeSession(message, session), extensionContext, out);
      case META.unsubscribe:
        return this.emitReply(await this.unsubscribeSession(message, session), extensionContext, out);
      case META.disconnect:
        return this.emitReply(await this.disconnect(message, session), extensionContext, out);
      default:
        return this.clientPublish(message, session, extensionContext, out);
    }
  }

  // ---------------------------------------------------------------- meta handlers

  private async handshake(message: Message, context: ProcessContext): Promise<Reply> {
    const reply = this.reply(message, false);
    delete reply.clientId; // §3.5: no clientId on a handshake reply unless one was made
    const { version, supportedConnectionTypes: types } = message;
    if (typeof version !== 'string') return { ...reply, error: bayeuxError('missingParameter', ['version']), advice: { reconnect: 'none' } };
    if (!Array.isArray(types) || !types.every((t) => typeof t === 'string')) {
      return { ...reply, error: bayeuxError('missingParameter', ['supportedConnectionTypes']), advice: { reconnect: 'none' } };
    }
    const minimum = typeof message.minimumVersion === 'string' ? message.minimumVersion : version;
    if (majorVersion(minimum) > 1 || majorVersion(version) < 1) {
      return { ...reply, error: bayeuxError('versionMismatch', [version], `this server speaks Bayeux ${BAYEUX_VERSION}`), advice: { reconnect: 'none' } };
    }
    const offered = this.options.transports;
    if (!types.some((t) => (offered as string[]).includes(t))) {
      return {
        ...reply,
        error: bayeuxError('connectionTypeMismatch', types.slice(0, 8), `this server offers ${offered.join(', ')}`),
        supportedConnectionTypes: offered,
        advice: { reconnect: 'none' },
      };
    }
    if (this.draining) {
      // No advice: both clients then try the handshake again (see DRAIN_RECONNECT_INTERVAL).
      return { ...reply, error: bayeuxError('serverError', [], 'server is shutting down') };
    }
    const address = context.request.remoteAddress ?? 'unknown';
    if (!this.handshakeLimiter.take(address)) {
      // Advice without `reconnect` (a refused handshake is retried anyway), for the reason given
      // at DRAIN_RECONNECT_INTERVAL: "handshake" here makes Faye drop what it asked before its first handshake.
      return { ...reply, error: bayeuxError('rateLimited', [], 'too many handshakes from this address'), advice: { interval: 2000 } };
    }
    const { maxSessionsPerIp } = this.options;
    if (maxSessionsPerIp > 0 && (this.sessionsPerAddress.get(address) ?? 0) >= maxSessionsPerIp) {
      return { ...reply, error: bayeuxError('rateLimited', [], `at most ${maxSessionsPerIp} sessions per address`), advice: { interval: 10_000 } };
    }
    let identity = null;
    try {
      identity = this.authenticator ? await this.authenticator({ message, request: context.request }) : null;
    } catch (error) {
      if (!(error instanceof AuthenticationError)) throw error;
      return { ...reply, error: bayeuxError('unauthorized', [], error.reason), advice: { reconnect: 'none' } };
    }
    if (identity === null && !this.options.anonymous) {
      return { ...reply, error: bayeuxError('unauthorized', [], 'credentials required (a token in ext.token)'), advice: { reconnect: 'none' } };
    }
    if (identity?.expiresAt !== undefined && identity.expiresAt <= Date.now()) {
      return { ...reply, error: bayeuxError('unauthorized', [], 'token expired'), advice: { reconnect: 'none' } };
    }
    const session = new Session(newClientId(), this, this.options.maxQueue);
    session.identity = identity;
    session.browserId = context.request.browserId;
    // A handshake that carried its browser's cookie has presented it: bound from the start.
    session.browserConfirmed = context.request.browserId !== undefined && context.request.browserIdIssued !== true;
    session.remoteAddress = address;
    session.origin = context.connection;
    if (this.options.publishRate > 0) session.publishBucket = new TokenBucket(this.options.publishRate, this.options.publishBurst);
    this.sessions.set(session.id, session);
    this.sessionsPerAddress.set(address, (this.sessionsPerAddress.get(address) ?? 0) + 1);
    // Known to the engine at once, so that a delivery from any node reaches it.
    await this.engine.addSession(session.id, identity?.id ?? null).catch((error: unknown) => this.reportError(error));
    if (context.connection) session.bind(context.connection);
    // A session that never connects is swept like one that stopped connecting.
    session.scheduleExpiry(this.options.maxInterval);
    if (identity?.expiresAt !== undefined) {
      // Credentials that expire end the session then, with a reason the client can see.
      session.tokenExpiry = this.wheel.schedule(identity.expiresAt - Date.now(), () => this.endSession(session, 'token-expired'));
    }
    // The CometD ack extension asks with ext.ack: true (see extensions/ack.ts).
    if (this.options.ack && message.ext?.ack === true) session.ack = new Acknowledgement(this.options.maxQueue);
    this.events.emit('handshake', session);
    // Built field by field: this runs for every new connection.
    reply.successful = true;
    if (identity) reply.authSuccessful = true;
    if (session.ack) reply.ext = { ack: session.ack.handshakeReply };
    reply.version = BAYEUX_VERSION;
    reply.minimumVersion = BAYEUX_VERSION;
    reply.supportedConnectionTypes = offered;
    reply.clientId = session.id;
    reply.advice = this.advice();
    return reply;
  }

  private async connect(message: Message, session: Session | null, context: ProcessContext, batchSize: number, out: string[]): Promise<void> {
    const extensionContext: ExtensionContext = { session, transport: context };
    if (!session) return this.emitReply(this.unknownClient(message), extensionContext, out);
    const type = message.connectionType;
    if (typeof type !== 'string' || !(this.options.transports as string[]).includes(type)) {
      const error =
        typeof type !== 'string'
          ? bayeuxError('missingParameter', ['connectionType'])
          : bayeuxError('connectionTypeMismatch', [type], `this server offers ${this.options.transports.join(', ')}`);
      return this.emitReply({ ...this.reply(message, false), error, advice: { reconnect: 'handshake', interval: 0 } }, extensionContext, out);
    }
    session.connectionType = type as ConnectionType;
    if (context.connection) session.bind(context.connection);
    const acknowledged = message.ext?.ack;
    if (session.ack && typeof acknowledged === 'number' && Number.isSafeInteger(acknowledged)) {
      // What the client did not receive goes out again, before anything newer.
      const resend = session.ack.acknowledge(acknowledged);
      this.counters.resent += resend.length;
      session.resend(resend);
    }

    // Streamed types (Faye's eventsource, http-streaming) carry messages on their stream; their
    // connects are answered at once and only keep the session alive (BAYEUX.md A46).
    const streamed = isStreamedConnectionType(type);
    const advice: Advice = streamed ? { reconnect: 'retry', interval: this.options.timeout, timeout: 0 } : this.advice();
    const clientTimeout = typeof message.advice?.timeout === 'number' && message.advice.timeout >= 0 ? message.advice.timeout : Infinity;
    const timeout = Math.min(this.options.timeout, clientTimeout);
    const pushing = session.connection?.open === true;
    // Answer at once (BAYEUX.md A20): a streamed type, the client asked for timeout 0, this is
    // the first connect (so the client learns it is connected), the connect shares its request
    // with other messages, or messages are already waiting with no push line to carry them.
    if (this.draining) {
      // Shutting down: hand over what is waiting at once, and have the client connect again a
      // second later (here while the drain lasts, then the restarted server or another node).
      session.release('superseded');
      return this.finishConnect(message, session, { reason: 'shutdown', events: pushing ? [] : session.takeQueued() }, advice, extensionContext, out);
    }
    if (streamed || timeout === 0 || !session.connected || batchSize > 1 || (session.queue.length > 0 && !pushing)) {
      session.release('superseded');
      const events = pushing ? [] : session.takeQueued();
      return this.finishConnect(message, session, { reason: 'message', events }, advice, extensionContext, out);
    }
    const held = session.hold(timeout, context.connection);
    if (context.onClientGone) {
      // The client gave up on this request (closed the socket): answer nothing to it, and leave
      // the queue for the next connect. Only while this connect is the one held: once answered,
      // a later close must not release a newer connect.
      let answered = false;
      void held.then(() => (answered = true));
      context.onClientGone(() => {
        if (!answered) session.release('superseded');
      });
    }
    const connection = context.connection;
    if (connection) {
      void held.then(async (release) => {
        const later: string[] = [];
        await this.finishConnect(message, session, release, advice, extensionContext, later);
        if (later.length > 0) connection.send(later);
      });
      return;
    }
    return this.finishConnect(message, session, await held, advice, extensionContext, out);
  }

  private async finishConnect(message: Message, session: Session, release: Release, advice: Advice, context: ExtensionContext, out: string[]): Promise<void> {
    const reply = this.reply(message, true);
    if (release.reason === 'token-expired') {
      reply.successful = false;
      reply.error = bayeuxError('unauthorized', [], 'session ended: token expired');
      reply.advice = { reconnect: 'handshake', interval: 0 };
    } else if (release.reason === 'slow-consumer') {
      reply.successful = false;
      reply.error = bayeuxError('serverError', [], `session ended: more than ${this.options.maxQueue} messages waited for it; handshake again and recover`);
      reply.advice = { reconnect: 'handshake', interval: 0 };
    } else if (release.reason === 'disconnected') reply.advice = { reconnect: 'none' };
    // Draining: see DRAIN_RECONNECT_INTERVAL for why this is "retry" and not "handshake".
    else if (release.reason === 'shutdown') reply.advice = { ...advice, reconnect: 'retry', interval: DRAIN_RECONNECT_INTERVAL };
    // A newer connect took this one's place: answered at once, flagged with the spec's
    // multiple-clients advice (two lines for one session usually mean two tabs or a retry).
    else if (release.reason === 'superseded') reply.advice = { ...advice, 'multiple-clients': true };
    else reply.advice = advice;
    if (session.ack && reply.successful) reply.ext = { ...reply.ext, ack: session.ack.close() };
    if (!session.ended) {
      session.connected = true;
      session.scheduleExpiry((advice.interval ?? 0) + this.options.maxInterval);
    }
    await this.emitReply(reply, context, out);
    for (const event of release.events) out.push(event);
  }

  private async subscribeSession(message: Message, session: Session | null): Promise<Reply> {
    if (!session) return this.unknownClient(message);
    const reply = this.reply(message, false);
    if (message.subscription !== undefined) reply.subscription = message.subscription;
    const channels = subscriptionList(message.subscription);
    if (!channels) return { ...reply, error: bayeuxError('missingParameter', ['subscription'], 'a channel name or a non-empty list of them') };
    const fresh: string[] = [];
    /** Named again while already subscribed (a subscribe resent after its reply was lost): recovery still applies. */
    const again: string[] = [];
    for (const channel of channels) {
      const problem = channelProblem(channel, { maxLength: this.options.maxChannelLength });
      if (problem) return { ...reply, error: bayeuxError('channelInvalid', [channel], problem) };
      // Bayeux §Meta Channels: clients do not subscribe to /meta. Exact channels only, so
      // "/meta/subscribe/x" is refused too (Faye CVE-2020-11020).
      if (isMeta(channel)) return { ...reply, error: bayeuxError('channelForbidden', [channel]) };
      // Service channels are never broadcast; old CometD apps subscribe before publishing, so
      // succeed without recording anything (BAYEUX.md A10).
      if (isService(channel) || fresh.includes(channel) || again.includes(channel)) continue;
      if (session.subscriptions.has(channel)) again.push(channel);
      else fresh.push(channel);
    }
    if (session.subscriptions.size + fresh.length > this.options.maxSubscriptions) {
      return { ...reply, error: bayeuxError('tooManySubscriptions', [], `at most ${this.options.maxSubscriptions} per session`) };
    }
    const recover = readRecoverRequests(message.ext?.recover, [...fresh, ...again], { maxEntries: this.options.maxSubscriptions, maxChannelLength: this.options.maxChannelLength });
    if (!recover.ok) return { ...reply, error: recover.error };
    for (const channel of fresh) {
      const refused = (await this.policy.check('subscribe', channel, session, message)) ?? (await this.checkCreate(channel, session, message));
      if (refused) return { ...reply, error: bayeuxError('channelForbidden', [channel], refused) };
    }
    // Positions of the exact channels (where a later recovery can start from) and the outcome of
    // each recovery asked for; replayed messages are queued before anything published later.
    const positions: Record<string, Position> = {};
    const recovered: Record<string, boolean> = {};
    let replayBudget = this.options.maxReplay;
    for (const channel of [...fresh, ...again]) {
      const isNew = !session.subscriptions.has(channel);
      // Subscribing again is a no-op for the engine except for the recovery it carries.
      if (!isNew && !recover.byPattern.has(channel)) continue;
      session.subscriptions.add(channel);
      const outcome = await this.engine.subscribe(session.id, channel, recover.byPattern.get(channel), replayBudget);
      if (outcome.position) positions[channel] = outcome.position;
      for (const result of outcome.recovered) {
        recovered[result.channel] = result.recovered;
        replayBudget -= result.replayed;
      }
      if (isNew) this.events.emit('subscribe', session, channel);
    }
    const ext: Record<string, unknown> = {};
    if (Object.keys(positions).length > 0) ext.positions = positions;
    if (Object.keys(recovered).length > 0) ext.recovered = recovered;
    return { ...reply, successful: true, ...(Object.keys(ext).length > 0 ? { ext } : {}) };
  }

  private async unsubscribeSession(message: Message, session: Session | null): Promise<Reply> {
    if (!session) return this.unknownClient(message);
    const reply = this.reply(message, false);
    if (message.subscription !== undefined) reply.subscription = message.subscription;
    const channels = subscriptionList(message.subscription);
    if (!channels) return { ...reply, error: bayeuxError('missingParameter', ['subscription'], 'a channel name or a non-empty list of them') };
    for (const channel of channels) {
      const problem = channelProblem(channel, { maxLength: this.options.maxChannelLength });
      if (problem) return { ...reply, error: bayeuxError('channelInvalid', [channel], problem) };
      if (isMeta(channel)) return { ...reply, error: bayeuxError('channelForbidden', [channel]) };
    }
    for (const channel of channels) {
      if (!session.subscriptions.delete(channel)) continue;
      await this.engine.unsubscribe(session.id, channel);
      this.events.emit('unsubscribe', session, channel);
    }
    return { ...reply, successful: true };
  }

  private async disconnect(message: Message, session: Session | null): Promise<Reply> {
    if (!session) return this.unknownClient(message);
    this.endSession(session, 'client');
    return this.reply(message, true);
  }

  // ---------------------------------------------------------------- publishing

  private async clientPublish(message: Message, session: Session | null, context: ExtensionContext, out: string[]): Promise<void> {
    const { channel } = message;
    const fail = (error: string): Promise<void> => this.emitReply({ ...this.reply(message, false), error }, context, out);
    if (isMeta(channel)) return fail(bayeuxError('channelForbidden', [channel]));
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) {
      const detail = isWildcard(channel) ? 'cannot publish to a wildcard pattern' : problem;
      return fail(bayeuxError('channelInvalid', [channel], detail));
    }
    if (!session) return this.emitReply(this.unknownClient(message), context, out);
    if (message.data === undefined) return fail(bayeuxError('missingParameter', ['data']));
    // Nothing is acknowledged that the server may not live to deliver.
    if (this.draining) return fail(bayeuxError('serverError', [channel], 'server is shutting down'));
    if (session.publishBucket && !session.publishBucket.take()) {
      // Persistent flooding past the refusals is abuse: the session is ended.
      if (++session.refusedPublishes >= MAX_REFUSED_PUBLISHES) this.endSession(session, 'abuse');
      return fail(bayeuxError('rateLimited', [channel], `more than ${this.options.publishRate} publishes per second`));
    }
    session.refusedPublishes = 0;
    // A resend of a publish already accepted (same id, same session) is acknowledged again and
    // not published again. The id is remembered before the checks below, which may await, so a
    // resend arriving meanwhile is recognised too; a refusal forgets it.
    const dedupKey = message.id !== undefined && this.options.publishDedup > 0 && !isService(channel) ? String(message.id) : null;
    if (dedupKey !== null) {
      session.recentPublishes ??= new RecentIds(this.options.publishDedup);
      if (session.recentPublishes.has(dedupKey)) {
        this.counters.duplicatePublishes++;
        return this.emitReply(this.reply(message, true), context, out);
      }
      session.recentPublishes.add(dedupKey);
    }
    const refuse = (error: string): Promise<void> => {
      if (dedupKey !== null) session.recentPublishes?.delete(dedupKey);
      return fail(error);
    };
    const refused = (await this.policy.check('publish', channel, session, message)) ?? (await this.checkCreate(channel, session, message));
    if (refused) return refuse(bayeuxError('channelForbidden', [channel], refused));

    const delivered: Message = { channel, data: message.data };
    if (message.ext !== undefined) {
      // Credentials never travel on to subscribers, and positions are the server's to give.
      const { token: _token, position: _position, ...ext } = message.ext;
      if (Object.keys(ext).length > 0) delivered.ext = ext;
    }
    if (isService(channel)) {
      // Service channels go to in-process listeners only; a listener's result is the answer
      // (CometD remote call: the publish reply, then {id, channel, successful, data}).
      if (message.id !== undefined) delivered.id = message.id;
      if (this.tooLarge(JSON.stringify(delivered))) return fail(bayeuxError('messageTooLarge', [channel], `larger than ${this.options.maxMessageBytes} bytes`));
      const result = await this.notifyListeners(delivered, session);
      await this.emitReply(this.reply(message, true), context, out);
      if (result !== undefined) {
        const answer: Message = { channel, successful: true, data: result };
        if (message.id !== undefined) answer.id = message.id;
        await this.emitReply(answer, context, out);
      }
      return;
    }
    const publication = await this.prepare(delivered, null);
    if (publication && this.tooLarge(publication.payload)) {
      return refuse(bayeuxError('messageTooLarge', [channel], `larger than ${this.options.maxMessageBytes} bytes`));
    }
    if (publication) await this.send(publication, session);
    return this.emitReply(this.reply(message, true), context, out);
  }

  /** Whether a serialised message passes maxMessageBytes (counting bytes only when it might). */
  private tooLarge(payload: string): boolean {
    const limit = this.options.maxMessageBytes;
    return payload.length > limit || (payload.length * 3 > limit && Buffer.byteLength(payload) > limit);
  }

  /** The "create" check, asked only of channels that nobody subscribes to yet. */
  private async checkCreate(channel: string, session: Session, message: Message): Promise<string | null> {
    if (this.policy.open || (await this.engine.subscriberCount(channel)) > 0) return null;
    return this.policy.check('create', channel, session, message);
  }

  private async broadcast(message: Message, from: Session | null): Promise<void> {
    const publication = await this.prepare(message, null);
    if (publication) await this.send(publication, from);
  }

  private async send(publication: Publication, from: Session | null): Promise<void> {
    this.counters.published++;
    await this.engine.publish(publication);
    this.events.emit('publish', publication.message, from);
  }

  /**
   * Runs the outgoing extensions once and serialises once: every recipient shares the bytes. The
   * engine later adds the position to those bytes without serialising again (ext is written last).
   */
  private async prepare(message: Message, session: Session | null): Promise<Publication | null> {
    const out = await this.extensions.outgoing(message, { session, transport: null });
    if (!out) return null;
    const serialised = serialiseExtLast(out);
    return { channel: out.channel, message: out, payload: serialised.text, ext: serialised.ext };
  }

  /** Calls the listeners matching the message's channel; resolves to the first value one returns. */
  private async notifyListeners(message: Message, session: Session | null): Promise<unknown> {
    let result: unknown;
    for (const listener of this.listeners.match(message.channel)) {
      try {
        const value = await listener(message, session);
        if (result === undefined && value !== undefined) result = value;
      } catch (error) {
        this.events.emit('error', error);
      }
    }
    return result;
  }

  // ---------------------------------------------------------------- EngineHost

  onPublication(publication: Publication, clientIds: Iterable<string>): void {
    const { payload } = publication;
    const now = Date.now();
    for (const id of clientIds) {
      const session = this.sessions.get(id);
      if (session) this.enqueue(session, payload, now);
    }
    if (!isService(publication.channel)) void this.notifyListeners(publication.message, null);
  }

  onEndSession(clientId: string): void {
    const session = this.sessions.get(clientId);
    if (session) this.endSession(session, 'server');
  }

  onDirect(publication: Publication, clientId: string): void {
    const session = this.sessions.get(clientId);
    if (session) this.enqueue(session, publication.payload);
  }

  onReplay(clientId: string, channel: string, payloads: readonly string[]): void {
    const session = this.sessions.get(clientId);
    if (!session) return;
    this.counters.replayed += payloads.length;
    this.counters.deliveries += payloads.length;
    session.replay(channel, payloads);
  }

  private enqueue(session: Session, payload: string, now = Date.now()): void {
    this.counters.deliveries++;
    if (session.queue.full && this.options.queueOverflow === 'disconnect') {
      // A consumer this far behind is cut loose; its client handshakes again and recovers.
      this.counters.slowConsumers++;
      this.endSession(session, 'slow-consumer');
      return;
    }
    if (!session.enqueue(payload, now)) this.counters.queueDrops++;
  }

  // ---------------------------------------------------------------- SessionHost

  scheduleFlush(session: Session): void {
    if (session.flushPending) return;
    session.flushPending = true;
    this.dirty.push(session);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Everything a session is owed in this event-loop turn goes out in one write.
    setImmediate(() => this.flushNow());
  }

  private flushNow(): void {
    this.flushScheduled = false;
    const sessions = this.dirty;
    this.dirty = [];
    const now = Date.now();
    for (const session of sessions) {
      session.flushPending = false;
      session.flush(now);
    }
  }

  expire(session: Session): void {
    this.endSession(session, 'expired');
  }

  deliverTo(session: Session, channel: string, data: unknown): void {
    void this.prepare({ channel, data }, session).then((publication) => {
      if (publication) this.enqueue(session, publication.payload);
    });
  }

  /** Set by whoever reports delivery latency (the metrics endpoint). */
  deliveryObserver: ((waitedMs: number) => void) | null = null;

  observeDelivery(waitedMs: number): void {
    this.deliveryObserver?.(waitedMs);
  }

  disconnectSession(session: Session): void {
    this.endSession(session, 'server');
  }

  private endSession(session: Session, reason: DisconnectReason): void {
    if (session.ended) return;
    session.ended = true;
    session.cancelExpiry();
    this.wheel.cancel(session.tokenExpiry);
    session.release(reason === 'shutdown' || reason === 'token-expired' || reason === 'slow-consumer' ? reason : 'disconnected');
    this.sessions.delete(session.id);
    const address = session.remoteAddress ?? 'unknown';
    const count = (this.sessionsPerAddress.get(address) ?? 1) - 1;
    if (count > 0) this.sessionsPerAddress.set(address, count);
    else this.sessionsPerAddress.delete(address);
    session.subscriptions.clear();
    // A stream serves one session only: it ends with it (a WebSocket may carry others).
    session.connection?.sessionEnded();
    void this.engine.removeSession(session.id).catch((error) => this.events.emit('error', error));
    this.events.emit('disconnect', session, reason);
  }

  // ---------------------------------------------------------------- helpers

  /** Whether a request may speak for `session` (see security/session-binding.ts). */
  accepts(session: Session, context: ProcessContext): boolean {
    return speaksFor(this.options.sessionBinding, session, context);
  }

  private advice(): Advice {
    return { reconnect: 'retry', interval: this.options.interval, timeout: this.options.timeout };
  }

  /** The common reply fields: channel, id echoed (§id), clientId echoed (§3.5). */
  private reply(message: Message, successful: boolean): Reply {
    const reply: Reply = { channel: message.channel, successful };
    if (message.id !== undefined) reply.id = message.id;
    if (message.clientId !== undefined) reply.clientId = message.clientId;
    return reply;
  }

  /** A reply to a message that could not be read or was refused before any handler ran. */
  private refusal(value: unknown, error: string, advice?: Advice): Reply {
    const message = value as Partial<Message> | null;
    const channel = typeof message?.channel === 'string' ? message.channel : '/meta/unknown';
    const reply: Reply = { channel, successful: false, error };
    if (typeof message?.id === 'string' || typeof message?.id === 'number') reply.id = message.id;
    if (typeof message?.clientId === 'string') reply.clientId = message.clientId;
    if (advice) reply.advice = advice;
    return reply;
  }

  private unknownClient(message: Message): Reply {
    const error =
      message.clientId === undefined ? bayeuxError('clientIdMissing') : bayeuxError('clientUnknown', [message.clientId]);
    // Both clients act on advice, not on the code: "handshake" makes them start a new session.
    return { ...this.reply(message, false), error, advice: { reconnect: 'handshake', interval: 0 } };
  }

  private async emitReply(reply: Reply, context: ExtensionContext, out: string[]): Promise<void> {
    const final = await this.extensions.outgoing(reply, context);
    if (final) out.push(JSON.stringify(final));
  }

  private assertOpen(): void {
    if (this.draining) throw new PerihelionError('ERR_SERVER_CLOSED', 'the server is shutting down');
  }
}

function majorVersion(version: string): number {
  const major = Number.parseInt(version, 10);
  return Number.isNaN(major) ? 0 : major;
}

/** 160 random bits in hexadecimal (Bayeux §clientId asks for at least 128 and unguessable). */
function newClientId(): string {
  return randomHex(20);
}
