/**
 * Perihelion: the server applications use. It holds the Bayeux core (core/server.ts, assembled
 * from the options in assemble.ts) and the HTTP and WebSocket adapter in front of it, and offers
 * the public API: publish and listen in-process, deliver to one session, sessions, history,
 * extensions, events, stats, shutdown. Mount it in an existing node:http server (`attach`, or
 * `handleRequest`/`handleUpgrade` from a framework), or let it run its own (`listen`).
 */
import type { EventEmitter } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { channelProblem, isIdempotencyKey, isMeta, isService, type Message, type Position } from '@perihelion/protocol';
import { HttpApi } from './api/http-api.js';
import { reportAcceptErrors } from './http/accept-errors.js';
import { LocalClient, type LocalClientOptions } from './api/local-client.js';
import { Metrics, deliveryLatency, type LatencyHistogram, type LatencySummary } from './api/metrics.js';
import { OPERATION_PATHS, handleOperation } from './api/operations.js';
import { assembleCore } from './assemble.js';
import { Webhooks } from './callouts/webhooks.js';
import { checkData, checkDeliveryChannel } from './core/application-input.js';
import type { ProcessContext } from './core/contract.js';
import type { ServerStats } from './core/delivery.js';
import type { ServerEvents } from './core/events.js';
import type { Listener } from './core/listeners.js';
import { hasPresence, membersOf, type Member } from './core/presence.js';
import { broadcast, prepare, type BroadcastOptions } from './core/publish.js';
import type { ServerCore } from './core/server.js';
import type { Session } from './core/session.js';
import { API_DELIVERER, API_PUBLISHER, type Engine, type PublishOnce, type SessionInfo } from './engine/engine.js';
import type { HistoryPage, HistoryQuery } from './engine/history.js';
import { PerihelionError } from './errors.js';
import type { Extension } from './extensions/pipeline.js';
import type { JsonValue } from '@perihelion/state';
import { StateChannel, type StateOptions, type StatePatchMessage } from './state/state-channel.js';
import { StateChannels } from './state/state-service.js';
import { HttpAdapter } from './http/adapter.js';
import { answerPlainHttp, clientCertificateOptions, secureContextOptions, type TlsOptions } from './http/tls.js';
import type { ResolvedOptions, ServerOptions } from './options.js';

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface ListenOptions {
  /** Default: 8080. 0 picks a free port. */
  port?: number;
  /** Default: all interfaces. */
  host?: string;
  /** Answers requests outside the mount path (a landing page, an app). Default: 404. */
  fallback?: RequestHandler;
  /** Serve HTTPS and WSS with this certificate and key (default: plain HTTP and WS). */
  tls?: TlsOptions;
}

/** The server's events; 'error' also reports failed call-outs and webhook requests. */
export type PerihelionEvents = ServerEvents;

export interface PublishOptions {
  ext?: Record<string, unknown>;
  /** A session (clientId) that is not sent this message, on whichever node it is: the one it came from, say. */
  exclude?: string;
  /**
   * Names this publish, so that doing it again (a retry after a failure or a timeout, perhaps on
   * another node) publishes nothing: the same key within `idempotencyWindow` is recognised on
   * every node (the latest `idempotencyKeys` keys are kept). 1 to 255 visible ASCII characters;
   * the keys of `POST /api/publish` (`Idempotency-Key`) are the same ones.
   */
  idempotencyKey?: string;
}

export interface DeliverOptions {
  /**
   * Names this delivery, so that doing it again (a retry) sends nothing again to a session that
   * got it under this key, on whichever node: 1 to 255 visible ASCII characters, within
   * `idempotencyWindow`, apart from the publishes' keys. `deliverToUser` and `deliverWhere` key
   * each session's copy apart (one key each toward `idempotencyKeys`): a retry reaches only the
   * sessions the first try did not (one opened since, one on a node that did not answer).
   */
  idempotencyKey?: string;
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

export class Perihelion {
  readonly options: ResolvedOptions;
  /** Where subscriptions, history and presence live (MemoryEngine unless the `engine` option gives one). */
  readonly engine: Engine;
  /** Webhook deliveries (`dropped()`, `stats()`, `close()`); null without the `webhooks` option. */
  readonly webhooks: Webhooks | null;
  private readonly core: ServerCore;
  private readonly http: HttpAdapter;
  private readonly api: HttpApi;
  private readonly metrics: Metrics;
  private readonly latencyHistogram: LatencyHistogram;
  private readonly states: StateChannels;
  private owned: Server | null = null;
  /** Whether the own HTTPS listener asks for client certificates (fixed once it runs: see reloadTls). */
  private clientCertificates: TlsOptions['clientCertificates'];
  /** The connections handed to `serveHandedConnections` still open. */
  private handed: Set<Socket> | null = null;
  /** Set once the drain is over: handed connections are refused from then on, as a closed listener's. */
  private handedRefused = false;
  private shuttingDown: Promise<void> | null = null;

  constructor(options: ServerOptions = {}) {
    const latency = (this.latencyHistogram = deliveryLatency());
    this.core = assembleCore(options, { observeDelivery: (ms, writes) => latency.observe(ms / 1000, writes) });
    this.options = this.core.options;
    this.engine = this.core.engine;
    this.http = new HttpAdapter(this.core);
    this.api = new HttpApi(this, options.apiKey, (error) => this.core.reportError(error));
    this.metrics = new Metrics(this.core, latency);
    const engine = this.engine;
    this.states = new StateChannels({
      listeners: this.core.listeners,
      extensions: this.core.extensions,
      policy: this.core.security.policy,
      maxChannelLength: this.options.maxChannelLength,
      maxRelayed: this.options.maxRelayedStateRequests,
      ...(engine.stateHolder ? { holderOf: engine.stateHolder.bind(engine) } : {}),
      relay: {
        tell: (node, message) => this.core.forwarding.tellNode(node, message),
        deliver: (clientId, channel, data) => this.deliver(clientId, channel, data),
        disconnect: (clientId) => this.disconnectClient(clientId),
        reportError: (error) => this.core.reportError(error),
      },
    });
    this.core.forwarding.otherMessages = (from, message) => void this.states.relay.onNodeMessage(from, message);
    this.core.delivery.stateLost = (channel, holder) => this.stateLost(channel, holder);
    // Changes under way when the server closes are published before the engine goes.
    this.core.finishBeforeClosing(() => this.states.close());
    const report = (error: unknown): void => this.core.reportError(error);
    this.webhooks = options.webhooks && options.webhooks.length > 0 ? new Webhooks(options.webhooks, this, report) : null;
  }

  // ---------------------------------------------------------------- publishing and listening

  /**
   * Publishes `data` to every subscriber of `channel` (and the in-process listeners). Not `async`:
   * once the engine has started, a broadcast is handed to it before this returns, with no promise
   * made on the way (this is the path of every message an application publishes); a mistake
   * still comes back as a rejection. Resolves to false when `idempotencyKey` was published
   * already (nothing is published), else true.
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<boolean> {
    try {
      this.assertOpen();
      const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
      if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot publish to ${JSON.stringify(channel)}: ${problem}`);
      if (isMeta(channel)) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot publish to the meta channel ${channel}`);
      checkData(data, 'publish');
      if (options.exclude !== undefined && (typeof options.exclude !== 'string' || options.exclude === '')) {
        throw new PerihelionError('ERR_INVALID_ARGUMENT', `exclude must be a clientId, got ${JSON.stringify(options.exclude)}`);
      }
      const message: Message = { channel, data };
      if (options.ext) {
        // Positions (and skip notes) are the engine's to give, whoever publishes.
        const { position: _position, skip: _skip, ...ext } = options.ext;
        if (Object.keys(ext).length > 0) message.ext = ext;
      }
      const addressing = { exclude: options.exclude, once: options.idempotencyKey === undefined ? undefined : this.idempotent(options.idempotencyKey) };
      return this.core.isStarted ? this.publishMessage(message, addressing) : this.core.ready.then(() => this.publishMessage(message, addressing));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** What makes a publish with an idempotency key recognisable when it is done again (see PublishOnce). */
  private idempotent(key: string, publisher = API_PUBLISHER): PublishOnce {
    if (!isIdempotencyKey(key)) throw new PerihelionError('ERR_INVALID_ARGUMENT', `idempotencyKey must be 1 to 255 visible ASCII characters, got ${JSON.stringify(key)?.slice(0, 80)}`);
    return { client: publisher, id: key, keep: this.options.idempotencyKeys, forMs: this.options.idempotencyWindow };
  }

  /** A /service message goes to the in-process listeners only; any other is broadcast. */
  private publishMessage(message: Message, addressing: BroadcastOptions): Promise<boolean> {
    if (isService(message.channel)) return this.core.listeners.notify(message, null).then(() => true);
    return broadcast(this.core, message, addressing);
  }

  /**
   * Calls `listener` for every message on channels matching `pattern` (wildcards allowed),
   * including /service messages from clients. Returns a function that removes the listener.
   */
  subscribe(pattern: string, listener: Listener): () => void {
    this.assertNotClosed();
    const problem = channelProblem(pattern, { maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot listen to ${JSON.stringify(pattern)}: ${problem}`);
    // The protocol's own messages never reach listeners: a listener there would never be called.
    if (isMeta(pattern)) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot listen to the meta channel ${pattern}: extensions see the protocol's messages`);
    return this.core.listeners.add(pattern, listener);
  }

  /**
   * Sends `data` on `channel` to one session, on whichever node holds it; false when no session has
   * that id. With `idempotencyKey`, a delivery made again with the key (a retry) is not sent again
   * and resolves true, as the first did (see DeliverOptions).
   */
  async deliver(clientId: string, channel: string, data: unknown, options: DeliverOptions = {}): Promise<boolean> {
    this.assertOpen();
    this.checkDeliveryChannel(channel);
    checkData(data, 'deliver');
    const once = options.idempotencyKey === undefined ? undefined : this.idempotent(options.idempotencyKey, API_DELIVERER);
    const publication = await prepare(this.core.extensions, { channel, data }, null);
    if (!publication) return false;
    if (once !== undefined) publication.once = once;
    return this.engine.sendTo(clientId, publication);
  }

  /**
   * Sends `data` on `channel` to every session of one authenticated user (every tab and device),
   * on whichever nodes they are; resolves to how many sessions were reached (with
   * `idempotencyKey`, those that got it under the key before included: see DeliverOptions).
   */
  async deliverToUser(userId: string, channel: string, data: unknown, options: DeliverOptions = {}): Promise<number> {
    this.assertOpen();
    if (typeof userId !== 'string' || userId === '') throw new PerihelionError('ERR_INVALID_ARGUMENT', `a user id is a non-empty string, got ${JSON.stringify(userId)}`);
    this.checkDeliveryChannel(channel);
    checkData(data, 'deliver');
    const once = options.idempotencyKey === undefined ? undefined : this.idempotent(options.idempotencyKey, API_DELIVERER);
    await this.core.ready;
    return this.deliverToEach(await this.engine.sessionsOfUser(userId), channel, data, once);
  }

  /**
   * Sends `data` on `channel` to every session, on every node, for which `predicate` returns
   * true; resolves to how many sessions were reached. The predicate runs here, over each
   * session's description (`sessions()`): its user, roles, claims, `session.data` as JSON. With
   * `idempotencyKey`, each session gets it once under the key (see DeliverOptions).
   */
  async deliverWhere(predicate: (session: SessionInfo) => boolean, channel: string, data: unknown, options: DeliverOptions = {}): Promise<number> {
    this.assertOpen();
    if (typeof predicate !== 'function') throw new PerihelionError('ERR_INVALID_ARGUMENT', 'deliverWhere needs a predicate function');
    this.checkDeliveryChannel(channel);
    checkData(data, 'deliver');
    const once = options.idempotencyKey === undefined ? undefined : this.idempotent(options.idempotencyKey, API_DELIVERER);
    const chosen = (await this.sessions()).filter((session) => predicate(session)).map((session) => session.clientId);
    return this.deliverToEach(chosen, channel, data, once);
  }

  /**
   * Every live session, on every node (with Redis, each node is asked; one that does not answer
   * within `commandTimeout` is left out and reported through 'error').
   */
  async sessions(): Promise<SessionInfo[]> {
    this.assertNotClosed();
    await this.core.ready;
    return this.engine.census();
  }

  /**
   * A state channel: `initial` (or what `options.load` gives) held by the server and replicated
   * to clients as JSON patches, `{epoch, version, patch}` per change (state/state-channel.ts).
   * Resolves to its handle: `get()`, `version`, `update(fn | value)`.
   */
  async state<T extends JsonValue>(channel: string, initial: T, options: StateOptions = {}): Promise<StateChannel<T>> {
    this.assertOpen();
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot keep state on ${JSON.stringify(channel)}: ${problem}`);
    if (isMeta(channel) || isService(channel) || !hasPresence(channel)) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot keep state on ${channel}: meta, service and presence channels carry no state`);
    if (this.states.get(channel)) throw new PerihelionError('ERR_INVALID_ARGUMENT', `${channel} is a state channel already`);
    await this.core.ready;
    // One node of a cluster holds each state channel; the others' clients reach it through that
    // node (state/state-relay.ts).
    const holder = (await this.engine.claimState?.(channel)) ?? null;
    if (holder !== null) {
      this.states.heldBy(channel);
      throw new PerihelionError('ERR_STATE_DUPLICATE', `node ${holder} holds the state channel ${channel}: this node's clients reach it there; create each state channel on one node (docs/state.md)`);
    }
    // Given up before close() resolves: another node may claim the channel the moment it has.
    const release = async (): Promise<void> => void (await this.engine.releaseState?.(channel).catch(() => undefined));
    let stopWatching = (): void => {};
    const state = await StateChannel.create(channel, initial, options, {
      publish: (name, message) => broadcast(this.core, { channel: name, data: message }),
      reportError: (error) => this.core.reportError(error),
      closed: (name) => {
        stopWatching();
        this.states.remove(name);
        return release();
      },
    }).catch(async (error: unknown) => {
      await release();
      throw error;
    });
    if (this.states.get(channel)) throw new PerihelionError('ERR_INVALID_ARGUMENT', `${channel} is a state channel already`);
    this.states.add(state as unknown as StateChannel);
    // Another process serving the same state channel (each node of a cluster creating it) makes
    // replicas take a snapshot at nearly every patch, each node's in turn: said once, loudly.
    let told = false;
    stopWatching = this.core.listeners.add(channel, (message) => {
      const epoch = (message.data as { epoch?: unknown } | undefined)?.epoch;
      if (told || typeof epoch !== 'string' || epoch === state.epoch) return;
      told = true;
      this.core.reportError(new PerihelionError('ERR_STATE_DUPLICATE', `another process serves the state channel ${channel} too (its epoch ${epoch}, this one's ${state.epoch}): replicas would take a snapshot at every change; create each state channel on one node (docs/state.md)`));
    });
    // Said on the channel, as an empty patch of the new epoch: a replica of the state this one
    // replaces (a restart whose history outlived the process, with the Redis engine) takes a
    // snapshot now, live or in what it recovers, instead of at the next change.
    // (Its failure, an outgoing extension that throws, is reported: the channel exists either way.)
    await broadcast(this.core, { channel, data: { epoch: state.epoch, version: state.version, patch: [] } satisfies StatePatchMessage }).catch((error: unknown) => this.core.reportError(error));
    return state;
  }

  /**
   * Another node claimed a state channel of this one while it was taken for dead: that node's copy
   * is the cluster's now. This one closes (its handle's `update` rejects from then on) and this
   * node's clients reach the other through the relay; said once through 'error'.
   */
  private stateLost(channel: string, holder: string): void {
    const state = this.states.get(channel);
    if (!state) return;
    this.states.heldBy(channel);
    void state.close().catch((error: unknown) => this.core.reportError(error));
    this.core.reportError(new PerihelionError('ERR_STATE_DUPLICATE', `node ${holder} claimed the state channel ${channel} while this node was taken for dead: this node's copy is closed (changes made here since the cut are not in it), and its clients reach the channel there`));
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
    this.assertNotClosed();
    await this.core.ready;
    if (isMeta(channel) || isService(channel)) return null;
    return this.engine.history(channel, query);
  }

  private checkDeliveryChannel(channel: string): void {
    checkDeliveryChannel(channel, this.options.maxChannelLength);
  }

  /** One publication (outgoing extensions run, serialised once) sent to each session; how many were reached. */
  /**
   * One prepared message sent to each session; with `once`, each copy under its own key, the
   * caller's key and the session's id joined by a NUL (which a key cannot hold): a retry sends it
   * only where it did not go.
   */
  private async deliverToEach(clientIds: readonly string[], channel: string, data: unknown, once?: PublishOnce): Promise<number> {
    if (clientIds.length === 0) return 0;
    const publication = await prepare(this.core.extensions, { channel, data }, null);
    if (!publication) return 0;
    const sendTo = (clientId: string): Promise<boolean> => this.engine.sendTo(clientId, once === undefined ? publication : { ...publication, once: { ...once, id: `${once.id}\u0000${clientId}` } });
    const reached = await Promise.all(clientIds.map(sendTo));
    return reached.filter(Boolean).length;
  }

  /**
   * A client inside this process: it subscribes, publishes and sends /service requests through
   * the same extensions, authentication and channel rules as a remote client (api/local-client.ts).
   */
  localClient(options: LocalClientOptions = {}): LocalClient {
    this.assertNotClosed();
    return new LocalClient(this.core, options);
  }

  /** Hooks on every message in and out (extensions/pipeline.ts); returns a function that removes them. */
  addExtension(extension: Extension): () => void {
    this.assertNotClosed();
    return this.core.extensions.add(extension);
  }

  on<E extends keyof ServerEvents>(event: E, listener: (...args: ServerEvents[E]) => void): () => void {
    // The untyped view: the emitter's typings cannot follow a generic event name; the signature above checks.
    const events = this.core.events as EventEmitter;
    const bound = listener as (...args: unknown[]) => void;
    events.on(event, bound);
    return () => events.off(event, bound);
  }

  /**
   * The members of `channel` on every node (core/presence.ts): the sessions subscribed to exactly
   * it, one per user (`presenceBy: "user"`; an anonymous session is a member of its own) or per
   * session; what `/service/presence` answers.
   */
  async presence(channel: string): Promise<Member[]> {
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.options.maxChannelLength });
    if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `no presence for ${JSON.stringify(channel)}: ${problem}`);
    if (!hasPresence(channel)) throw new PerihelionError('ERR_INVALID_CHANNEL', `no presence for ${channel}: meta, service and presence channels have no members`);
    this.assertNotClosed();
    await this.core.ready;
    return membersOf(this.engine, channel, this.options.presenceBy);
  }

  // ---------------------------------------------------------------- sessions

  getSession(clientId: string): Session | undefined {
    return this.core.delivery.sessions.get(clientId);
  }

  get sessionCount(): number {
    return this.core.delivery.sessions.size;
  }

  /** The live sessions of one authenticated user, on this node. */
  sessionsOf(userId: string): Session[] {
    return this.core.delivery.sessionsOfUser(userId);
  }

  /**
   * Ends a session on whichever node holds it (with the Redis engine, any node of the cluster),
   * as if its client had sent /meta/disconnect; false when no node knows it.
   */
  async disconnectClient(clientId: string): Promise<boolean> {
    this.assertNotClosed();
    await this.core.ready;
    return this.engine.endSession(clientId);
  }

  /** Ends every session of one user, on every node; resolves to how many were ended. */
  async disconnectUser(userId: string): Promise<number> {
    this.assertNotClosed();
    await this.core.ready;
    // All at once: with Redis, the lookups and messages to the owners share the round trips. Every
    // attempt runs to its end before a failure (Redis going away midway) is reported.
    const outcomes = await Promise.allSettled((await this.engine.sessionsOfUser(userId)).map((clientId) => this.engine.endSession(clientId)));
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
    return outcomes.filter((outcome) => outcome.status === 'fulfilled' && outcome.value).length;
  }

  // ---------------------------------------------------------------- inspection

  stats(): ServerStats {
    return this.core.delivery.stats();
  }

  /**
   * Delivery latency of this node over about the last `windowMs` (at most 5 minutes): how long
   * messages waited in session queues, as p50/p95/p99 in ms, from the histogram /metrics exports.
   */
  latency(windowMs = 10_000): LatencySummary {
    return this.latencyHistogram.recent(windowMs);
  }

  /** Whether handshakes are authenticated (an authenticator or JWT keys are configured). */
  get authenticates(): boolean {
    return this.core.security.authenticator !== null;
  }

  /** Number of configured channel rules. */
  get ruleCount(): number {
    return this.core.security.policy.ruleCount;
  }

  /** Resolves once the engine has started (rejects when it cannot, e.g. Redis is unreachable). */
  whenReady(): Promise<void> {
    return this.core.ready;
  }

  /** The engine has started and the server is not shutting down. */
  get isReady(): boolean {
    return this.core.isReady;
  }

  /** Shutting down: finishing what clients are owed, taking nothing new. */
  get isDraining(): boolean {
    return this.core.isDraining;
  }

  // ---------------------------------------------------------------- transports and mounting

  /**
   * The transport-independent entry point every transport calls: handles one batch of untrusted
   * values and resolves to the serialised replies, in order (core/dispatch.ts).
   */
  process(batch: readonly unknown[], context: ProcessContext): Promise<string[]> {
    // Always a promise here, as documented; the transports inside take the replies at once when they can.
    const replies = this.core.process(batch, context);
    return replies instanceof Promise ? replies : Promise.resolve(replies);
  }

  /**
   * Handles the request if it is Perihelion's: under the mount path, the HTTP API (/api/*) or an
   * operations endpoint (/health, /ready, /metrics). False means "not mine".
   */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.http.handleRequest(req, res)) return true;
    const path = (req.url ?? '/').split('?')[0]!;
    if (this.api.handles(path)) {
      this.api.handle(req, res, path);
      return true;
    }
    if (this.options.operations && OPERATION_PATHS.has(path)) {
      handleOperation(this.core, this.metrics, req, res, path).catch(() => res.destroy());
      return true;
    }
    return false;
  }

  /** Handles a WebSocket upgrade at the mount path; false means "not mine". */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    return this.http.handleUpgrade(req, socket, head);
  }

  /** Adds Perihelion to an existing node:http server; other paths stay with the server's own handlers. */
  attach(server: Server): this {
    // The server's own request handlers run only for requests Perihelion does not answer.
    const own = server.listeners('request') as RequestHandler[];
    server.removeAllListeners('request');
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (this.handleRequest(req, res)) return;
      for (const handler of own) handler.call(server, req, res);
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.http.handleUpgrade(req, socket, head)) return;
      // Nobody else listens for upgrades: refuse instead of leaving the socket hanging.
      if (server.listenerCount('upgrade') === 1) socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    return this;
  }

  /** Starts a node:http server of its own; resolves to the address it listens on. */
  async listen(options: ListenOptions = {}): Promise<AddressInfo> {
    // A listener opened now would never be closed: close() has run.
    this.assertOpen();
    const server = this.ownServer(options.fallback, options.tls);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 8080, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // From now on an 'error' is a connection that could not be accepted (descriptors exhausted):
    // reported, and the server goes on.
    reportAcceptErrors(server, (error) => this.core.reportError(error));
    return server.address() as AddressInfo;
  }

  /**
   * Serves connections that another process accepted (the primary of `perihelion serve
   * --workers` hands each to a worker): returns the function to give each socket to, which this
   * server then serves as one of its own (node:http's, as `listen` runs it). `close` waits for them.
   */
  serveHandedConnections(options: Pick<ListenOptions, 'fallback' | 'tls'> = {}): (socket: Socket) => void {
    const server = this.ownServer(options.fallback, options.tls);
    // node:http tracks its connections (headersTimeout, requestTimeout, closeIdleConnections)
    // from its 'listening' event on: a server that never listens must be told it started.
    server.emit('listening');
    const handed = (this.handed = new Set<Socket>());
    return (socket) => {
      // As a listening server: taken while draining (clients collect what they are owed and are
      // told the server is shutting down), refused once closed.
      if (this.handedRefused) {
        socket.destroy();
        return;
      }
      handed.add(socket);
      socket.once('close', () => handed.delete(socket));
      server.emit('connection', socket);
      // Handed over unread (the primary does not read it): start reading now.
      socket.resume();
    };
  }

  /**
   * The node:http (or, with `tls`, node:https) server that `listen` and `serveHandedConnections`
   * run, answering `fallback` outside the mount path.
   */
  private ownServer(fallback: RequestHandler = (_req, res) => void res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`Not found. The Bayeux endpoint is ${this.options.path}\n`), tls?: TlsOptions): Server {
    const handler: RequestHandler = (req, res) => {
      if (!this.handleRequest(req, res)) fallback(req, res);
    };
    // The timeouts below are checked every second (node:http's default, 30 s, let a 30 s limit run
    // to 60). A TLS handshake gets as long as a pause in a body (node:tls's default is 2 minutes,
    // time enough for a connection that never finishes one to hold a descriptor).
    const server: Server = tls
      ? createHttpsServer({ ...secureContextOptions(tls), ...clientCertificateOptions(tls), connectionsCheckingInterval: 1000, handshakeTimeout: this.options.bodyTimeout }, handler)
      : createHttpServer({ connectionsCheckingInterval: 1000 }, handler);
    if (server instanceof HttpsServer) answerPlainHttp(server, this.options.bodyTimeout);
    this.clientCertificates = tls?.clientCertificates;
    server.keepAliveTimeout = this.options.keepAliveTimeout;
    // The whole request must arrive in this time: a backstop for the answers given without reading
    // the body (a 404, a 401 of the API, /health), whose senders could otherwise drip it for ever
    // and hold the connection. Bayeux's own bodies fail sooner, with a Bayeux error (bodyTimeout).
    // A held connect is not cut by it: its request has arrived; only its answer waits.
    server.requestTimeout = this.options.bodyTimeout * 6 + 5_000;
    // node:http checks neither limit when the headers' is the longer one.
    server.headersTimeout = Math.min(30_000, server.requestTimeout);
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (!this.http.handleUpgrade(req, socket, head)) socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    this.owned = server;
    return server;
  }

  /**
   * Replaces the certificate and key of the server's own HTTPS listener (`listen({ tls })`), as a
   * renewed certificate needs: connections made from now on use them, those open keep theirs.
   * Throws ERR_INVALID_OPTION, keeping the ones in use, when they cannot serve.
   */
  reloadTls(tls: TlsOptions): void {
    const server = this.owned;
    if (!(server instanceof HttpsServer)) throw new PerihelionError('ERR_INVALID_ARGUMENT', 'reloadTls: this server does not serve TLS itself (listen({ tls }))');
    const options = secureContextOptions(tls);
    // Whether a connection must show a certificate is the listener's own, set when it started.
    if (tls.clientCertificates !== this.clientCertificates) {
      throw new PerihelionError('ERR_INVALID_OPTION', `reloadTls: clientCertificates is ${JSON.stringify(this.clientCertificates ?? 'not set')} on this listener and cannot change while it runs (restart to change it)`);
    }
    server.setSecureContext(options);
  }

  /** The address of the server started by `listen`, if any. */
  address(): AddressInfo | null {
    return (this.owned?.address() as AddressInfo | null) ?? null;
  }

  /**
   * Graceful shutdown: drain (no new sessions or publishes; held connects answered with advice to
   * connect again a second later; waiting messages collected, up to `drainTimeout`), close
   * WebSockets with 1001 (going away) and streams, then close the server's own listener.
   */
  close(): Promise<void> {
    this.shuttingDown ??= this.stop();
    return this.shuttingDown;
  }

  private async stop(): Promise<void> {
    // While draining, new sessions are refused but the listener stays open: server.close() would
    // also drop the idle keep-alive connections that clients need to collect what they are owed.
    await this.core.close();
    this.http.close();
    const owned = this.owned;
    if (!owned) return;
    const handed = this.handed;
    this.handedRefused = true;
    await new Promise<void>((resolve) => {
      // node:http waits for the connections it accepted, not for handed ones: those are counted here.
      let closed = false;
      const finish = (): void => {
        if (!closed || (handed !== null && handed.size > 0)) return;
        clearInterval(sweep);
        resolve();
      };
      // Connections whose last answer is still being written become idle a moment later;
      // close them as they do, instead of waiting for their keep-alive timeout. Those still busy
      // after a second (a request body dripping in, the drain being over) are cut.
      const cutAt = Date.now() + 1_000;
      const sweep = setInterval(() => {
        if (Date.now() < cutAt) owned.closeIdleConnections();
        else {
          owned.closeAllConnections();
          for (const socket of handed ?? []) socket.destroy();
        }
        finish();
      }, 50);
      owned.close(() => {
        closed = true;
        finish();
      });
    });
  }

  private assertOpen(): void {
    if (this.core.isDraining) throw new PerihelionError('ERR_SERVER_CLOSED', 'the server is shutting down');
  }

  /** For what may still be asked while the server drains (who is connected), not after. */
  private assertNotClosed(): void {
    if (this.core.isClosed) throw new PerihelionError('ERR_SERVER_CLOSED', 'the server is closed');
  }
}

export function createServer(options: ServerOptions = {}): Perihelion {
  return new Perihelion(options);
}
