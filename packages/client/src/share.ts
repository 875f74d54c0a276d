/**
 * One connection for every tab of an origin (browsers allow few connections per host on
 * HTTP/1.1, and every connection costs the server a session).
 *
 * Where the browser has SharedWorker, the connection lives in one (worker.ts), which outlives
 * any single tab and is not throttled as a background tab is; each tab talks to it over its
 * MessagePort. Otherwise (or when the worker script cannot load) the tabs elect a leader with
 * the Web Locks API: each asks for the same lock; the holder keeps the connection and relays
 * over a BroadcastChannel, the others queue for the lock. When the leader tab goes away the
 * browser gives the lock to the next tab, which opens a new session; every tab then announces
 * its subscriptions and open requests again, so they survive the change.
 *
 * Either way the hub (hub.ts) does the work; this module is a tab's side of it.
 *
 * A browser may refuse both: with site data blocked, Chromium rejects every `locks.request`
 * ("The request was denied.") and fails the worker, though `navigator.locks` exists. Sharing
 * cannot work then, so the tab holds an unshared connection of its own (as `shared: false`),
 * through a hub that serves this tab alone; what it asked meanwhile runs there.
 */
import { asPosition, type ConnectionType, type Message, type Position } from '@perihelion/protocol';
import type { Bayeux, State, StateChange, TransportChange } from './bayeux.js';
import type { Backend, BackendEvents, Sharing } from './client.js';
import { addExtension, type Extension } from './extensions.js';
import { fromWire, Hub, type HubConfig, type Op, type Send, type Wire } from './hub.js';
import type { SubscribeOutcome } from './subscriptions.js';

interface Waiting {
  op: Op;
  args: unknown[];
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/** How long a SharedWorker may take to answer before the tabs elect a leader instead. */
const WORKER_TIMEOUT = 5000;

/**
 * Whether the browser has what sharing needs. Whether it grants the locks (it may not, with site
 * data blocked) is learnt only by asking: a refused tab connects alone (`SharedBackend.alone`).
 */
export function shareAvailable(): boolean {
  const g = globalThis as unknown as { BroadcastChannel?: unknown; navigator?: { locks?: unknown }; document?: unknown };
  return typeof g.BroadcastChannel === 'function' && g.navigator?.locks !== undefined && g.document !== undefined;
}

export class SharedBackend implements Backend {
  state: State = 'disconnected';
  clientId: string | undefined;
  type: ConnectionType | undefined;
  sharing: Sharing = 'follower';
  private readonly tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
  private readonly locks: LockManager;
  private readonly name: string;
  /** How messages reach the hub (a worker's port, or the tabs' BroadcastChannel). */
  private link: (message: Wire) => void = () => {};
  /** Messages held until this tab's liveness lock is granted. */
  private early: Wire[] | null = [];
  /** Set when this tab holds the connection (the leader, or alone when sharing is refused). */
  private hub: Hub | null = null;
  /** The SharedWorker's port, or the tabs' channel: closed when this tab ends up alone. */
  private port: MessagePort | null = null;
  private channel: BroadcastChannel | null = null;
  /** Operations sent to the hub and not answered yet (sent again to a new hub). */
  private readonly waiting = new Map<string, Waiting>();
  /** Patterns this tab needs, announced again to every new hub. */
  private readonly needs = new Set<string>();
  private readonly extensions: Extension[] = [];
  private wantConnect = false;
  private rid = 0;
  /**
   * The last position relayed to this tab on each channel: a tab that becomes the leader starts
   * its connection from them (messages published during the handover are recovered), and a relay
   * repeated across the handover is dropped here.
   */
  private readonly seen = new Map<string, Position>();

  constructor(
    url: string,
    private readonly make: (events: BackendEvents) => Bayeux,
    private readonly events: BackendEvents,
    worker: { script: string; config: HubConfig } | null,
  ) {
    const g = globalThis as unknown as { navigator: { locks: LockManager }; addEventListener?: (type: string, listener: () => void) => void };
    this.locks = g.navigator.locks;
    this.name = `perihelion:${url}`;
    // Held for the tab's lifetime (the promise never settles): a hub waiting for this lock
    // learns that the tab is gone, even if it crashed without a word. Nothing reaches the hub
    // before the lock is held, or the hub's wait could be granted first and take the tab for gone.
    this.lock(`${this.name}:tab:${this.tab}`, () => {
      const early = this.early ?? [];
      this.early = null;
      for (const message of early) this.link(message);
    });
    for (const [event, online] of [
      ['offline', false],
      ['online', true],
    ] as const) {
      // A leader's own Bayeux hears these itself.
      g.addEventListener?.(event, () => {
        if (!this.hub) this.post({ t: 'net', online });
      });
    }
    g.addEventListener?.('pagehide', () => {
      // A leader ends its session now rather than letting the server expire it.
      if (this.hub) void this.hub.bayeux.disconnect();
      else this.post({ t: 'bye', from: this.tab });
    });
    if (worker) {
      try {
        this.useWorker(worker.script, worker.config);
        return;
      } catch {
        // No worker from this script (a policy, another origin): elect a leader.
      }
    }
    this.elect();
  }

  private useWorker(script: string, config: HubConfig): void {
    const worker = new SharedWorker(script, { name: this.name });
    const port = worker.port;
    this.port = port;
    this.sharing = 'worker';
    this.link = (message) => port.postMessage(message);
    port.onmessage = (event: MessageEvent<Wire>) => this.onWire(event.data);
    port.start();
    const fallback = (): void => {
      if (this.sharing !== 'worker' || this.answered) return;
      port.close();
      this.elect();
    };
    worker.onerror = fallback;
    setTimeout(fallback, WORKER_TIMEOUT);
    this.post({ t: 'hello', from: this.tab, config });
  }

  /** The hub has answered this tab at least once. */
  private answered = false;

  private elect(): void {
    this.sharing = 'follower';
    const channel = new BroadcastChannel(this.name);
    this.channel = channel;
    channel.onmessage = (event: MessageEvent<Wire>) => this.onWire(event.data);
    this.link = (message) => channel.postMessage(message);
    this.lock(this.name, () => this.hold((message) => channel.postMessage(message), 'leader'));
    this.post({ t: 'hello', from: this.tab });
  }

  /**
   * Asks for a lock, runs `granted` once it is held, and holds it for the tab's lifetime (the
   * callback's promise never settles). A refusal (storage blocked: the browser denies every
   * request) means that the tabs cannot share, and this one connects by itself; a lock granted
   * once it is alone is let go at once. (`request` never throws: Web IDL turns an exception of a
   * promise-returning method into a rejection.)
   */
  private lock(name: string, granted: () => void): void {
    this.locks
      .request(name, () => {
        if (this.sharing === 'off') return undefined;
        granted();
        return new Promise<never>(() => {});
      })
      .catch(() => this.alone());
  }

  /** Sharing cannot work here: this tab holds its own connection, for itself alone. */
  private alone(): void {
    if (this.sharing === 'off' || this.hub) return;
    // Nothing is posted from now on: every operation runs on this tab's own hub.
    this.port?.close();
    this.channel?.close();
    this.hold(() => {}, 'off');
  }

  /** Opens the connection in this tab, for every tab (`send` relays to them) or for this one alone. */
  private hold(send: Send, sharing: 'leader' | 'off'): void {
    const own: BackendEvents = {
      ...this.events,
      state: (change) => {
        this.mirror(change.state, hub.bayeux.clientId, hub.bayeux.type);
        this.events.state(change);
      },
      transport: (change) => this.moved(change),
    };
    const hub = new Hub(this.make, send, { id: this.tab, events: own }, this.locks, this.name);
    this.hub = hub;
    hub.bayeux.seedPositions(this.seen);
    this.sharing = sharing;
    for (const extension of this.extensions) hub.bayeux.addExtension(extension);
    // This tab's own wishes, and what it had asked of the previous hub, now run here.
    const mine = [...this.waiting.values()];
    this.waiting.clear();
    for (const pattern of this.needs) void hub.run(this.tab, 'need', [pattern]).catch(() => {});
    for (const item of mine) hub.run(this.tab, item.op, item.args).then(item.resolve, item.reject);
    hub.announce();
    if (this.wantConnect || this.needs.size > 0) void hub.bayeux.connect();
  }

  private post(message: Wire): void {
    if (this.early) this.early.push(message);
    else this.link(message);
  }

  private onWire(message: Wire): void {
    if (this.hub) return this.hub.handle(message);
    switch (message.t) {
      case 'leader':
        if (message.to !== undefined && message.to !== this.tab) return;
        this.answered = true;
        this.mirror(message.state, message.clientId, message.type, 'hub changed');
        if (message.to === undefined) {
          // A new hub: it knows nothing of this tab yet.
          for (const pattern of this.needs) this.ask('need', [pattern]).catch(() => {});
          for (const [rid, item] of this.waiting) this.post({ t: 'op', from: this.tab, rid, op: item.op, args: item.args });
        }
        return;
      case 'state':
        this.mirror(message.change.state, message.clientId, message.type, message.change.reason);
        return;
      case 'transport':
        return this.moved(message.change);
      case 'deliver': {
        const position = asPosition(message.message.ext?.position);
        if (position) {
          const last = this.seen.get(message.message.channel);
          if (last && last.epoch === position.epoch && position.offset <= last.offset) return;
          this.seen.set(message.message.channel, position);
        }
        return this.events.deliver(message.message);
      }
      case 'recovery':
        return this.events.recovery(message.pattern, message.outcome);
      case 'refused':
        if (this.needs.delete(message.pattern)) this.events.refused(message.pattern, fromWire(message.error));
        return;
      case 'res': {
        if (message.to !== this.tab) return;
        const item = this.waiting.get(message.rid);
        if (!item) return;
        this.waiting.delete(message.rid);
        if (message.ok) item.resolve(message.value);
        else item.reject(fromWire(message.error));
        return;
      }
      default:
        return;
    }
  }

  /** The hub's session moved to another connection type: this tab's view follows. */
  private moved(change: TransportChange): void {
    this.type = change.transport;
    this.events.transport(change);
  }

  /** The hub's state as this tab sees it; followers report changes to their client. */
  private mirror(state: State, clientId: string | undefined, type: ConnectionType | undefined, reason = ''): void {
    this.clientId = clientId;
    this.type = type;
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    if (!this.hub) this.events.state({ state, previous, reason, transport: type } satisfies StateChange);
  }

  private ask(op: Op, args: unknown[]): Promise<unknown> {
    if (this.hub) return this.hub.run(this.tab, op, args);
    return new Promise((resolve, reject) => {
      const rid = `${this.tab}:${++this.rid}`;
      this.waiting.set(rid, { op, args, resolve, reject });
      this.post({ t: 'op', from: this.tab, rid, op, args });
    });
  }

  // ------------------------------------------------------------------ Backend

  connect(): Promise<void> {
    this.wantConnect = true;
    return this.ask('connect', []) as Promise<void>;
  }

  async disconnect(): Promise<void> {
    this.wantConnect = false;
    const patterns = [...this.needs];
    this.needs.clear();
    await Promise.all(patterns.map((pattern) => this.ask('release', [pattern]).catch(() => {})));
    // A leader ends the session only when no other tab still uses it.
    if (this.hub && !this.hub.used) await this.hub.bayeux.disconnect();
  }

  need(pattern: string, since?: Record<string, Position>): Promise<SubscribeOutcome> {
    this.needs.add(pattern);
    return this.ask('need', since ? [pattern, since] : [pattern]) as Promise<SubscribeOutcome>;
  }

  release(pattern: string): Promise<void> {
    this.needs.delete(pattern);
    return this.ask('release', [pattern]) as Promise<void>;
  }

  publish(channel: string, data: unknown, ext: Record<string, unknown> | undefined): Promise<Message> {
    return this.ask('publish', [channel, data, ext]) as Promise<Message>;
  }

  call(channel: string, data: unknown, timeout: number): Promise<unknown> {
    return this.ask('call', [channel, data, timeout]);
  }

  batch<T>(fn: () => T): T {
    return this.hub ? this.hub.bayeux.batch(fn) : fn();
  }

  /**
   * Extensions run where the connection is. A leader tab runs its own; functions cannot cross
   * to a SharedWorker, so with one they are refused: use `worker: false` to keep them.
   */
  addExtension(extension: Extension): () => void {
    if (this.sharing === 'worker') {
      throw new TypeError('extensions cannot run in the SharedWorker that holds the connection; create the client with { worker: false } (a leader tab then runs them) or { shared: false }');
    }
    const forget = addExtension(this.extensions, extension);
    const remove = this.hub?.bayeux.addExtension(extension);
    return () => {
      forget();
      remove?.();
    };
  }
}
