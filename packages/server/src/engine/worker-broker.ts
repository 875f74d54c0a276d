/**
 * The broker of `perihelion serve --workers N`: in the primary process, it holds the one store of
 * the machine's workers (a MemoryEngine: subscriptions, sessions and their users, history and
 * positions, presence marks) and answers their WorkersEngine calls over their IPC lines.
 *
 * The MemoryEngine runs every call to completion without awaiting, so the workers see one order
 * of publications and positions, and a subscribe's replay ends exactly where live messages begin,
 * as in one process. Its callbacks are routed here to the worker that holds each session: a
 * publication goes once to every worker with a subscriber, with the ids of its sessions.
 *
 * A worker that exits takes its sessions with it: they are removed, and their clients, answered
 * 402 by the other workers (sendToNode says nobody listens), handshake again.
 *
 * Every line is bounded: while a worker has more than `maxBacklog` messages waiting on its line (it
 * cannot read as fast as the machine publishes), publishes and direct messages are refused with
 * ERR_ENGINE_UNAVAILABLE (a client's publish gets an error reply, `server.publish` rejects) until
 * it catches up, instead of queueing without end in the primary.
 */
import type { EngineHost, LostSession, Publication, PublishOnce, SessionInfo } from './engine.js';
import type { HistorySettings, Retention } from './history.js';
import { MemoryEngine } from './memory.js';
import { OnceIds } from './recent-ids.js';
import { fromWire, toWire, type LinkEnd, type ToBroker, type ToWorker, type WirePublication } from './worker-link.js';
import { PerihelionError } from '../errors.js';

/** How long a census waits for each worker to describe its sessions, ms. */
const CENSUS_WAIT_MS = 2_000;

/** Clients whose latest publish ids the broker keeps at most (the most recently active ones). */
const MAX_CLIENTS_WITH_IDS = 10_000;

/** Messages a worker's line may hold before publishes are refused (see maxBacklog). */
export const DEFAULT_MAX_BACKLOG = 50_000;

/** Engine methods a worker may call (anything else is refused). */
const METHODS = new Set([
  'browserKey',
  'addSession',
  'usersOf',
  'sessionsOfUser',
  'endSession',
  'subscribe',
  'unsubscribe',
  'removeSession',
  'publish',
  'history',
  'historyStats',
  'sendTo',
  'subscribers',
  'subscribedAmong',
  'subscriberCount',
  'channels',
  'markLeaving',
  'takeLeaving',
]);

interface Worker {
  link: LinkEnd<ToWorker, ToBroker>;
  /** The sessions it holds. */
  sessions: Set<string>;
}

export class WorkerBroker {
  private readonly engine = new MemoryEngine();
  private readonly workers = new Map<string, Worker>();
  /** Which worker holds each session. */
  private readonly owners = new Map<string, string>();
  /** Which worker holds each state channel (one a gone worker held is anyone's to claim). */
  private readonly stateHolders = new Map<string, string>();
  /** The retention of each channel, as the workers computed it from their options (bounded like the history). */
  private readonly retention = new Map<string, Retention>();
  private readonly settings: HistorySettings = {
    retentionFor: (channel) => this.retention.get(channel) ?? { size: 0, ttl: 0 },
    maxChannels: 10_000,
    maxChars: 1 << 27,
  };
  private greeted = false;
  private closing = false;
  /** Sessions of exited workers not yet handed to a live one (see detach). */
  private readonly lost: LostSession[] = [];
  private lastCensus = 0;
  private readonly censuses = new Map<number, { waiting: Set<string>; sessions: SessionInfo[]; done: () => void }>();
  private started: Promise<void>;
  private readonly maxBacklog: number;
  /** The publish ids of the workers' clients and the idempotency keys (see PublishOnce). */
  private readonly publishIds = new OnceIds(MAX_CLIENTS_WITH_IDS);

  /** `maxBacklog`: messages a worker's line may hold before publishes are refused (default 50 000). */
  constructor({ maxBacklog = DEFAULT_MAX_BACKLOG }: { maxBacklog?: number } = {}) {
    if (!Number.isInteger(maxBacklog) || maxBacklog < 1) throw new PerihelionError('ERR_INVALID_OPTION', `maxBacklog must be a whole number of messages (1 or more), got ${String(maxBacklog)}`);
    this.maxBacklog = maxBacklog;
    this.started = this.engine.start(this.host());
  }

  /** Serves one worker's line; `node` must be the id its hello will give. */
  attach(node: string, link: LinkEnd<ToWorker, ToBroker>): void {
    const worker: Worker = { link, sessions: new Set() };
    this.workers.set(node, worker);
    link.onMessage((message) => {
      if (this.workers.get(node) === worker) void this.receive(node, worker, message);
    });
  }

  /** A worker exited: its sessions go, and nothing is sent to it any more. */
  async detach(node: string): Promise<void> {
    const worker = this.workers.get(node);
    if (!worker) return;
    this.workers.delete(node);
    for (const [channel, holder] of this.stateHolders) if (holder === node) this.stateHolders.delete(channel);
    for (const census of this.censuses.values()) if (census.waiting.delete(node) && census.waiting.size === 0) census.done();
    const lost: LostSession[] = [];
    for (const clientId of worker.sessions) {
      if (this.owners.get(clientId) === node) this.owners.delete(clientId);
      const record = this.engine.sessionRecord(clientId);
      if (record) lost.push(record);
      await this.engine.removeSession(clientId);
    }
    // Their presence leaves are a worker's to publish (presence lives in the workers): the first
    // live one, or the next to come when none is left.
    this.lost.push(...lost);
    this.tellLost();
  }

  /** Hands the sessions of exited workers to one live worker. */
  private tellLost(): void {
    const [first] = this.workers.values();
    if (!first || this.lost.length === 0 || this.closing) return;
    first.link.send({ k: 'lost', sessions: this.lost.splice(0) });
  }

  /** The workers attached now. */
  get nodes(): string[] {
    return [...this.workers.keys()];
  }

  async close(): Promise<void> {
    // Stopping: the workers are stopping too, and no leave is theirs to publish.
    this.closing = true;
    for (const node of [...this.workers.keys()]) await this.detach(node);
    await this.engine.close();
  }

  private async receive(node: string, worker: Worker, message: ToBroker): Promise<void> {
    switch (message.k) {
      case 'hello':
        // Every worker runs with the same options; the first one's bounds are the machine's.
        if (!this.greeted) {
          this.greeted = true;
          this.settings.maxChannels = message.maxChannels;
          this.settings.maxChars = message.maxChars;
        }
        this.tellLost();
        return;
      case 'described': {
        const census = this.censuses.get(message.id);
        if (census?.waiting.delete(node)) {
          census.sessions.push(...message.sessions);
          if (census.waiting.size === 0) census.done();
        }
        return;
      }
      case 'call':
        return this.call(node, worker, message);
    }
  }

  private async call(node: string, worker: Worker, { id, method, args, retention }: Extract<ToBroker, { k: 'call' }>): Promise<void> {
    await this.started;
    for (const [channel, value] of retention) this.remember(channel, value);
    try {
      const value = await this.run(node, worker, method, args);
      worker.link.send({ k: 'ret', id, ok: true, value });
    } catch (error) {
      const code = error instanceof PerihelionError ? error.code : 'ERR_ENGINE_UNAVAILABLE';
      worker.link.send({ k: 'ret', id, ok: false, code, message: error instanceof Error ? error.message : String(error) });
    }
  }

  private async run(node: string, worker: Worker, method: string, args: unknown[]): Promise<unknown> {
    const engine = this.engine;
    const clientId = typeof args[0] === 'string' ? args[0] : '';
    switch (method) {
      case 'census':
        return this.census();
      case 'ownerOf': {
        const owner = this.owners.get(clientId);
        return owner === undefined || owner === node ? null : owner;
      }
      case 'sendToNode': {
        const target = this.workers.get(clientId);
        if (!target) return false;
        target.link.send({ k: 'node', from: node, payload: String(args[1]) });
        return true;
      }
      case 'claimState': {
        const channel = String(args[0]);
        const holder = this.stateHolders.get(channel);
        if (holder !== undefined && holder !== node && this.workers.has(holder)) return holder;
        this.stateHolders.set(channel, node);
        return null;
      }
      case 'stateHolder': {
        const holder = this.stateHolders.get(String(args[0]));
        return holder === undefined || holder === node || !this.workers.has(holder) ? null : holder;
      }
      case 'releaseState': {
        const channel = String(args[0]);
        if (this.stateHolders.get(channel) === node) this.stateHolders.delete(channel);
        return null;
      }
      case 'addSession':
      case 'subscribe':
        // A session is held by the worker that first named it (a subscribe may come first).
        if (!this.owners.has(clientId)) {
          this.owners.set(clientId, node);
          worker.sessions.add(clientId);
        }
        break;
      case 'removeSession':
        if (this.owners.get(clientId) === node) this.owners.delete(clientId);
        worker.sessions.delete(clientId);
        break;
      case 'channels':
        return [...(await engine.channels())];
      case 'sendTo': {
        this.refuseWhileBackedUp();
        // A delivery with an idempotency key: kept here, forgotten when it could not be made.
        const once = args[2] as PublishOnce | null;
        if (once && !this.publishIds.firstTime(once)) return true;
        let sent = false;
        try {
          sent = await engine.sendTo(clientId, fromBytes(args[1] as WirePublication));
          return sent;
        } finally {
          if (once && !sent) this.publishIds.forget(once);
        }
      }
      case 'publish': {
        this.refuseWhileBackedUp();
        // A resend (see PublishOnce) is known here whichever worker each of its sessions was on.
        const once = args[1] as PublishOnce | null;
        if (once && !this.publishIds.firstTime(once)) return false;
        // The caller learns the position its publication got (the other engines stamp its object).
        const publication = fromBytes(args[0] as WirePublication);
        await engine.publish(publication);
        return publication.position ?? null;
      }
    }
    if (!METHODS.has(method)) throw new PerihelionError('ERR_INVALID_ARGUMENT', `the broker does not know ${JSON.stringify(method)}`);
    return (engine as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method]!(...args);
  }

  /** Throws while a worker's line holds more than maxBacklog messages. */
  private refuseWhileBackedUp(): void {
    for (const [node, { link }] of this.workers) {
      const waiting = link.backlog?.() ?? 0;
      if (waiting > this.maxBacklog) {
        throw new PerihelionError('ERR_ENGINE_UNAVAILABLE', `worker ${node} has ${waiting} messages waiting on its line (more than ${this.maxBacklog}): publishes are refused until it catches up`);
      }
    }
  }

  private remember(channel: string, value: Retention): void {
    this.retention.delete(channel);
    this.retention.set(channel, value);
    // Kept for the channels the history may hold, and as many more: a channel forgotten here
    // only has its retention sent again with its next call.
    if (this.retention.size > this.settings.maxChannels * 2) this.retention.delete(this.retention.keys().next().value!);
  }

  /** Every worker describes its sessions; one that does not answer in time is left out. */
  private census(): Promise<SessionInfo[]> {
    const id = ++this.lastCensus;
    const sessions: SessionInfo[] = [];
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.censuses.delete(id);
        resolve(sessions);
      };
      const timer = setTimeout(done, CENSUS_WAIT_MS);
      this.censuses.set(id, { waiting: new Set(this.workers.keys()), sessions, done });
      if (this.workers.size === 0) return done();
      for (const { link } of this.workers.values()) link.send({ k: 'describe', id });
    });
  }

  /** The MemoryEngine's host: what it gives a session goes to the worker that holds it. */
  private host(): EngineHost {
    const to = (clientId: string): Worker | undefined => {
      const owner = this.owners.get(clientId);
      return owner === undefined ? undefined : this.workers.get(owner);
    };
    return {
      historySettings: this.settings,
      onPublication: (publication: Publication, clientIds: Iterable<string>) => {
        const byWorker = new Map<Worker, string[]>();
        for (const clientId of clientIds) {
          const worker = to(clientId);
          if (!worker) continue;
          const ids = byWorker.get(worker);
          if (ids) ids.push(clientId);
          else byWorker.set(worker, [clientId]);
        }
        if (byWorker.size === 0) return;
        const wire = toWire(publication);
        for (const [worker, ids] of byWorker) worker.link.send({ k: 'pub', publication: wire, ids });
      },
      onDirect: (publication, clientId) => to(clientId)?.link.send({ k: 'direct', publication: toWire(publication), clientId }),
      onEndSession: (clientId) => to(clientId)?.link.send({ k: 'end', clientId }),
      onReplay: (clientId, channel, payloads) => to(clientId)?.link.send({ k: 'replay', clientId, channel, payloads: [...payloads] }),
      onNodeMessage: () => {},
      onSessionsLost: () => {},
      onSessionsRestored: () => {},
      describeSessions: () => [],
      reportError: () => {},
      reportRestored: () => {},
    };
  }
}

/**
 * A publication from a worker, as the broker's engine takes it. The message object matters here
 * only when the position cannot be spliced into the bytes (`ext` neither absent nor a plain
 * object): then it is parsed from them; otherwise a stub takes the position's write.
 */
function fromBytes(wire: WirePublication): Publication {
  return wire.ext === 'none' || wire.ext === 'object' ? Object.assign(wire, { message: { channel: wire.channel } }) : fromWire(wire);
}
