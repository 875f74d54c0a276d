/**
 * The server core: the pieces a Bayeux server is made of, held together, and their lifecycle.
 *
 * It is given what the assembly (assemble.ts) chose: the options, the engine, the extension
 * pipeline and the security parts. It makes the rest: the events, the in-process listeners,
 * the timer wheel and local delivery (delivery.ts), which is both the engine's host and the
 * sessions' host. Transports reach it through `process(batch, context)` (dispatch.ts), the one
 * entry point; the public API (perihelion.ts) reaches it through the same pieces. The meta
 * handlers (meta/) and the publish path (publish.ts) are functions of the pieces they use.
 */
import type { Engine } from '../engine/engine.js';
import type { HistorySettings } from '../engine/history.js';
import { PerihelionError } from '../errors.js';
import type { ExtensionPipeline } from '../extensions/pipeline.js';
import { ProxyTrust } from '../http/client-address.js';
import type { ResolvedOptions } from '../options.js';
import { REPORT_EVERY_MS, ReportThrottle } from '../report-throttle.js';
import type { Authenticator } from '../security/authenticate.js';
import { BrowserIds } from '../security/browser-cookie.js';
import { BrowserLines } from './browser-lines.js';
import type { SecurityPolicy } from '../security/policy.js';
import type { KeyedLimiter, TokenBucket } from '../security/rate-limit.js';
import { speaksFor } from '../security/session-binding.js';
import type { ProcessContext, TransportHost } from './contract.js';
import { LocalDelivery, type Counters } from './delivery.js';
import { dispatch } from './dispatch.js';
import { Forwarding } from './forwarding.js';
import { serverEvents, type ServerEventEmitter } from './events.js';
import { ListenerRegistry } from './listeners.js';
import { LoadGuard } from './load-guard.js';
import { Presence } from './presence.js';
import type { ServerSession } from './session.js';
import { TimerWheel } from './timer-wheel.js';

/** Who may have a session, and do what, how often (security/). */
export interface Security {
  /** Authenticates handshakes; null: every handshake is anonymous. */
  authenticator: Authenticator | null;
  /** Who may create, subscribe to and publish on which channel. */
  policy: SecurityPolicy;
  /** Handshakes allowed per remote address. */
  handshakeLimiter: KeyedLimiter;
  /** The publish rate limit of a new session; null: none. */
  publishLimit(): TokenBucket | null;
  /** The subscription rate limit of a new session (channels subscribed or unsubscribed); null: none. */
  subscribeLimit(): TokenBucket | null;
}

/** What the assembly gives the core. */
export interface CoreParts {
  options: ResolvedOptions;
  engine: Engine;
  extensions: ExtensionPipeline;
  security: Security;
  historySettings: HistorySettings;
  /** Told how long the oldest of the messages just written to a session waited, in ms. */
  observeDelivery: (waitedMs: number, writes?: number) => void;
}

export class ServerCore implements TransportHost {
  readonly options: ResolvedOptions;
  readonly proxies: ProxyTrust;
  /** The browser ids given to cookie-less requests, and which of them are one browser's (session binding). */
  readonly browserIds: BrowserIds;
  /** The lines (held long-polls, streams) each browser holds open, against `maxSessionsPerBrowser` (browser-lines.ts). */
  readonly browserLines: BrowserLines;
  readonly engine: Engine;
  readonly extensions: ExtensionPipeline;
  readonly security: Security;
  readonly events: ServerEventEmitter = serverEvents();
  readonly listeners = new ListenerRegistry((error) => this.reportError(error));
  readonly wheel = new TimerWheel(100, (error) => this.reportError(error));
  readonly delivery: LocalDelivery;
  /** The overload policy: when to refuse new sessions and client publishes (load-guard.ts). */
  readonly load: LoadGuard;
  /** Requests for sessions of other nodes, and other nodes' requests for this node's (no sticky sessions). */
  readonly forwarding: Forwarding;
  /** Join and leave events and the /service/presence request (presence.ts); null with `presence: false`. */
  readonly presence: Presence | null;
  /** Resolves once the engine has started. */
  readonly ready: Promise<void>;
  private started = false;
  private draining = false;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly closingTasks: Array<() => Promise<void>> = [];

  constructor(parts: CoreParts) {
    this.options = parts.options;
    this.proxies = new ProxyTrust(this.options.trustProxy);
    this.browserIds = new BrowserIds(this.options.cookieReuseWindow);
    this.browserLines = new BrowserLines(this.options.maxSessionsPerBrowser);
    this.engine = parts.engine;
    this.extensions = parts.extensions;
    this.security = parts.security;
    this.delivery = new LocalDelivery({
      options: this.options,
      engine: this.engine,
      events: this.events,
      extensions: this.extensions,
      listeners: this.listeners,
      wheel: this.wheel,
      historySettings: parts.historySettings,
      observeDelivery: parts.observeDelivery,
    });
    this.presence = this.options.presence ? new Presence(this) : null;
    this.load = new LoadGuard(this.options, () => this.delivery.sessions.size);
    this.forwarding = new Forwarding({
      options: this.options,
      engine: this.engine,
      sessions: this.delivery.sessions,
      process: (batch, context) => this.process(batch, context),
      sessionFor: (clientId, context) => this.sessionFor(clientId, context),
      reportError: (error) => this.reportError(error),
    });
    this.delivery.nodeMessages = (from, payload) => this.forwarding.onNodeMessage(from, payload);
    this.delivery.sessionsLost = (sessions) => this.presence?.sessionsLost(sessions);
    this.delivery.sessionsRestored = () => this.presence?.sessionsRestored();
    this.delivery.restored = (message) => this.reportRestored(message);
    this.ready = this.engine.start(this.delivery).then(() => this.browserIds.useKey(this.engine.browserKey?.() ?? ''));
    this.ready.then(
      () => (this.started = true),
      (error: unknown) => this.reportError(error),
    );
  }

  /**
   * The entry point of every transport (dispatch.ts). A batch for a session another node holds
   * goes to that node (forwarding.ts) and its replies come back.
   */
  process(batch: readonly unknown[], context: ProcessContext): string[] | Promise<string[]> {
    const forwarded = context.forwarded ? null : this.forwarding.forward(batch, context);
    if (forwarded === null) return dispatch(this, batch, context);
    return forwarded.then((replies) => replies ?? dispatch(this, batch, context));
  }

  /** The session `clientId` names, if this request may speak for it (security/session-binding.ts); else null. */
  sessionFor(clientId: string, context: ProcessContext): ServerSession | null {
    const session = this.delivery.sessions.get(clientId);
    return session && speaksFor(this.options.sessionBinding, session, context, this.browserIds) ? session : null;
  }

  /** Reports a failure inside the server through the 'error' event; the server keeps serving. */
  reportError(error: unknown): void {
    this.events.emit('error', error);
  }

  private readonly unavailableReports = new ReportThrottle(REPORT_EVERY_MS);

  /**
   * A client's request refused because the engine cannot be reached (answered 503): reported at
   * once, then at most once per REPORT_EVERY_MS with how many there were.
   */
  reportUnavailable(error: PerihelionError): void {
    const count = this.unavailableReports.count();
    if (count === 0) return;
    this.reportError(count === 1 ? error : new PerihelionError('ERR_ENGINE_UNAVAILABLE', `${count} requests answered 503 since the last report: ${error.message}`, { cause: error }));
  }

  /**
   * The engine is whole again: the 'restored' event, saying how many refusals were counted and
   * not reported yet; the next outage's first refusal is reported at once.
   */
  private reportRestored(message: string): void {
    this.presence?.shareAfterOutage();
    const unreported = this.unavailableReports.flush();
    this.events.emit('restored', unreported === 0 ? message : `${message} (${unreported} more requests were answered 503 since the last report)`);
  }

  get counters(): Counters {
    return this.delivery.counters;
  }

  /** The engine has started (whether or not the server is shutting down since). */
  get isStarted(): boolean {
    return this.started;
  }

  /** The engine has started and the server is not shutting down. */
  get isReady(): boolean {
    return this.started && !this.draining;
  }

  /** Why the engine cannot reach its store now (Redis away); null while it can, or has none. */
  get engineAway(): string | null {
    return this.engine.away?.() ?? null;
  }

  /** Shutting down: finishing what clients are owed, taking nothing new. */
  get isDraining(): boolean {
    return this.draining;
  }

  /** Drained: every message is refused, every session has ended. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Stops the core gracefully. First it drains: no new sessions, no new publishes; every held
   * connect is answered with what it carries and advice to connect again a second later (see
   * DRAIN_RECONNECT_INTERVAL in meta/connect.ts); sessions that still have messages waiting get up
   * to `drainTimeout` ms for their next connect to collect them. Then sessions end and the engine
   * closes.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /** Work to finish once draining began, before sessions end and the engine closes (state channels' pending changes). */
  finishBeforeClosing(task: () => Promise<void>): void {
    this.closingTasks.push(task);
  }

  private async shutdown(): Promise<void> {
    const { sessions } = this.delivery;
    this.draining = true;
    for (const session of sessions.values()) session.release('shutdown');
    await Promise.all(this.closingTasks.map((task) => task().catch((error: unknown) => this.reportError(error))));
    const deadline = Date.now() + this.options.drainTimeout;
    while (Date.now() < deadline && [...sessions.values()].some((session) => session.queue.length > 0)) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    this.closed = true;
    for (const session of [...sessions.values()]) {
      this.delivery.write(session, Date.now());
      this.delivery.end(session, 'shutdown');
    }
    this.delivery.flushNow();
    // The presence steps of the sessions just ended still need the engine.
    await this.presence?.close();
    this.forwarding.close();
    this.load.stop();
    this.wheel.stop();
    this.security.handshakeLimiter.stop();
    await this.ready.catch(() => {});
    await this.engine.close();
  }
}
