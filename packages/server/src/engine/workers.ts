/**
 * The engine of one worker of `perihelion serve --workers N`: the workers of a machine act as one
 * server without Redis. Every call goes to the broker in the primary process (worker-broker.ts),
 * which holds the one store; what the broker hands this worker (publications for its sessions,
 * replays, messages from other workers, requests to end a session) comes back on the same line.
 *
 * A worker is a node as in cluster mode: a request for a session another worker holds is
 * forwarded to it (core/forwarding.ts, through `ownerOf` and `sendToNode`), so the primary may
 * hand any connection to any worker.
 *
 * Calls waiting for the broker are bounded: at most `maxPending` at once (more are refused at
 * once), each answered within `callTimeout` or refused (a primary that hangs): both with
 * ERR_ENGINE_UNAVAILABLE, as a Redis engine that cannot reach Redis.
 */
import { randomBytes } from 'node:crypto';
import type { Engine, EngineHost, Publication, RecoverRequest, SessionInfo, SubscribeOutcome } from './engine.js';
import type { HistoryPage, HistoryQuery } from './history.js';
import { channelsOf, fromWire, parentLink, toWire, type LinkEnd, type ToBroker, type ToWorker } from './worker-link.js';
import { stampPosition, withPosition } from './position.js';
import type { Position } from '@perihelion/protocol';
import { ERROR_CODES, PerihelionError, type ErrorCode } from '../errors.js';

/** Bounds of a worker's calls to the broker. */
export interface WorkersEngineOptions {
  /** Longest wait for the broker's answer, ms. Default: 10 000. */
  callTimeout?: number;
  /** Most calls waiting for an answer at once. Default: 50 000. */
  maxPending?: number;
}

interface PendingCall {
  method: string;
  sentAt: number;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

export class WorkersEngine implements Engine {
  readonly name = 'workers';
  private host: EngineHost | null = null;
  private lastId = 0;
  /** In the order they were made (ids grow), so the oldest come first. */
  private readonly pending = new Map<number, PendingCall>();
  private readonly callTimeout: number;
  private readonly maxPending: number;
  private sweeper: NodeJS.Timeout | null = null;
  /** Called when no call waits any more (close waits for that). */
  private onIdle: (() => void) | null = null;
  /** The browser key every worker shares, the primary's (see Engine.browserKey); set by start. */
  private key = '';

  /**
   * `link`: the line to the broker (default: this process's IPC channel to its parent);
   * `nodeId`: this worker's id, which the broker was told when it attached the line.
   */
  constructor(
    private readonly link: LinkEnd<ToBroker, ToWorker> = parentLink(),
    readonly nodeId: string = randomBytes(6).toString('hex'),
    { callTimeout = 10_000, maxPending = 50_000 }: WorkersEngineOptions = {},
  ) {
    for (const [name, value] of [['callTimeout', callTimeout], ['maxPending', maxPending]] as const) {
      if (!Number.isInteger(value) || value < 1) throw new PerihelionError('ERR_INVALID_OPTION', `${name} must be a whole number (1 or more), got ${String(value)}`);
    }
    this.callTimeout = callTimeout;
    this.maxPending = maxPending;
    link.onMessage((message) => this.receive(message));
  }

  async start(host: EngineHost): Promise<void> {
    this.host = host;
    const { maxChannels, maxChars } = host.historySettings;
    this.link.send({ k: 'hello', node: this.nodeId, maxChannels, maxChars });
    // One timer for every deadline: the oldest calls are checked a few times per timeout. It keeps
    // the process alive only while a call waits.
    this.sweeper = setInterval(() => this.expire(Date.now()), Math.max(10, Math.floor(this.callTimeout / 4)));
    this.sweeper.unref();
    // The primary's: the same for every worker. A broker that does not answer leaves this worker
    // its own (its calls fail anyway, each at its deadline).
    this.key = await this.call<string>('browserKey', []).catch(() => '');
  }

  browserKey(): string {
    return this.key;
  }

  async close(): Promise<void> {
    // The calls already sent get their answers first (a shutdown ends every session, and each
    // removeSession is on its way to the broker): at most callTimeout, after which the sweeper
    // has refused them.
    if (this.pending.size > 0 && this.sweeper) await new Promise<void>((resolve) => (this.onIdle = resolve));
    this.onIdle = null;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    this.host = null;
    for (const { reject } of this.pending.values()) reject(new PerihelionError('ERR_ENGINE_CLOSED', 'the workers engine is closed'));
    this.pending.clear();
  }

  addSession(clientId: string, user: string | null = null): Promise<void> {
    return this.call('addSession', [clientId, user]);
  }

  usersOf(clientIds: readonly string[]): Promise<(string | null)[]> {
    return this.call('usersOf', [clientIds]);
  }

  sessionsOfUser(user: string): Promise<string[]> {
    return this.call('sessionsOfUser', [user]);
  }

  endSession(clientId: string): Promise<boolean> {
    return this.call('endSession', [clientId]);
  }

  subscribe(clientId: string, pattern: string, recover: readonly RecoverRequest[] = [], maxReplay = Infinity): Promise<SubscribeOutcome> {
    // Infinity does not survive IPC's JSON.
    return this.call('subscribe', [clientId, pattern, recover, Number.isFinite(maxReplay) ? maxReplay : Number.MAX_SAFE_INTEGER]);
  }

  unsubscribe(clientId: string, pattern: string): Promise<void> {
    return this.call('unsubscribe', [clientId, pattern]);
  }

  removeSession(clientId: string): Promise<void> {
    return this.call('removeSession', [clientId]);
  }

  async publish(publication: Publication): Promise<boolean> {
    // The broker sends the bytes and their form, not the message object they were made from.
    const position = await this.call<Position | null | false>('publish', [toWire(publication), publication.once ?? null]);
    if (position === false) return false;
    // The position is recorded on the caller's object too, as the other engines do.
    if (position) stampPosition(publication, position, withPosition(publication, position));
    return true;
  }

  history(channel: string, query?: HistoryQuery): Promise<HistoryPage | null> {
    return this.call('history', query === undefined ? [channel] : [channel, query]);
  }

  historyStats(): Promise<{ channels: number; messages: number }> {
    return this.call('historyStats', []);
  }

  sendTo(clientId: string, publication: Publication): Promise<boolean> {
    return this.call('sendTo', [clientId, toWire(publication), publication.once ?? null]);
  }

  subscribers(pattern: string): Promise<string[]> {
    return this.call('subscribers', [pattern]);
  }

  subscribedAmong(pattern: string, clientIds: readonly string[]): Promise<string[]> {
    return this.call('subscribedAmong', [pattern, clientIds]);
  }

  subscriberCount(pattern: string): Promise<number> {
    return this.call('subscriberCount', [pattern]);
  }

  async channels(): Promise<Map<string, number>> {
    return new Map(await this.call<[string, number][]>('channels', []));
  }

  census(): Promise<SessionInfo[]> {
    return this.call('census', []);
  }

  ownerOf(clientId: string): Promise<string | null> {
    return this.call('ownerOf', [clientId]);
  }

  sendToNode(node: string, payload: string): Promise<boolean> {
    return this.call('sendToNode', [node, payload]);
  }

  claimState(channel: string): Promise<string | null> {
    return this.call('claimState', [channel]);
  }

  stateHolder(channel: string): Promise<string | null> {
    return this.call('stateHolder', [channel]);
  }

  async releaseState(channel: string): Promise<void> {
    await this.call('releaseState', [channel]);
  }

  markLeaving(channel: string, member: string, ttlMs: number): Promise<string> {
    return this.call('markLeaving', [channel, member, ttlMs]);
  }

  takeLeaving(channel: string, member: string, token?: string): Promise<boolean> {
    return this.call('takeLeaving', token === undefined ? [channel, member] : [channel, member, token]);
  }

  private call<T>(method: string, args: unknown[]): Promise<T> {
    const host = this.host;
    if (!host) return Promise.reject(new PerihelionError('ERR_ENGINE_CLOSED', 'the workers engine is not started or already closed'));
    if (this.pending.size >= this.maxPending) {
      return Promise.reject(new PerihelionError('ERR_ENGINE_UNAVAILABLE', `${this.pending.size} calls to the workers' broker are waiting for an answer (at most ${this.maxPending}): ${method} refused`));
    }
    const id = ++this.lastId;
    const retention = channelsOf(method, args).map((channel): [string, ReturnType<typeof host.historySettings.retentionFor>] => [channel, host.historySettings.retentionFor(channel)]);
    if (this.pending.size === 0) this.sweeper?.ref();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { method, sentAt: Date.now(), resolve: resolve as (value: unknown) => void, reject });
      this.link.send({ k: 'call', id, method, args, retention });
    });
  }

  /** Refuses the calls older than callTimeout (an answer that comes later is dropped). */
  private expire(now: number): void {
    for (const [id, call] of this.pending) {
      if (now - call.sentAt < this.callTimeout) return;
      this.forget(id);
      call.reject(new PerihelionError('ERR_ENGINE_UNAVAILABLE', `the workers' broker did not answer ${call.method} within ${this.callTimeout} ms`));
    }
  }

  private forget(id: number): void {
    this.pending.delete(id);
    if (this.pending.size > 0) return;
    this.sweeper?.unref();
    this.onIdle?.();
  }

  private receive(message: ToWorker): void {
    const host = this.host;
    switch (message.k) {
      case 'ret': {
        const pending = this.pending.get(message.id);
        if (!pending) return;
        this.forget(message.id);
        if (message.ok) pending.resolve(message.value);
        else pending.reject(new PerihelionError(message.code in ERROR_CODES ? (message.code as ErrorCode) : 'ERR_ENGINE_UNAVAILABLE', message.message));
        return;
      }
      case 'pub':
        return host?.onPublication(fromWire(message.publication), message.ids);
      case 'direct':
        return host?.onDirect(fromWire(message.publication), message.clientId);
      case 'end':
        return host?.onEndSession(message.clientId);
      case 'replay':
        return host?.onReplay(message.clientId, message.channel, message.payloads);
      case 'node':
        return host?.onNodeMessage(message.from, message.payload);
      case 'lost':
        return host?.onSessionsLost(message.sessions);
      case 'describe':
        this.link.send({ k: 'described', id: message.id, sessions: host?.describeSessions() ?? [] });
        return;
    }
  }
}
