/**
 * One connection for every tab of an origin (browsers allow few connections per host on
 * HTTP/1.1, and every connection costs the server a session).
 *
 * The tabs elect a leader with the Web Locks API: each tab asks for the same lock; the one that
 * holds it keeps the connection (a real Bayeux session) and relays over a BroadcastChannel;
 * the others queue for the lock. When the leader tab goes away the browser releases its lock,
 * the next tab in the queue takes over, opens its own session and every tab announces its
 * subscriptions again, so they survive the change.
 *
 * The leader counts subscriptions per tab: the server subscription to a pattern ends only when
 * no tab wants it. Deliveries are broadcast once; each tab calls its own handlers.
 */
import type { ConnectionType, Message } from '@perihelion/protocol';
import type { Bayeux, Extension, RecoveryOutcome, State, StateChange, SubscribeOutcome } from './bayeux.js';
import type { Backend, BackendEvents } from './client.js';
import { ClientError, type ClientErrorCode } from './errors.js';

type Op = 'connect' | 'need' | 'release' | 'publish' | 'call';

interface WireError {
  code: ClientErrorCode;
  message: string;
  bayeux: string | undefined;
}

type Wire =
  | { t: 'hello'; from: string }
  | { t: 'bye'; from: string }
  | { t: 'leader'; from: string; to?: string; state: State; clientId: string | undefined; type: ConnectionType | undefined }
  | { t: 'state'; change: StateChange; clientId: string | undefined; type: ConnectionType | undefined }
  | { t: 'deliver'; message: Message }
  | { t: 'recovery'; pattern: string; outcome: RecoveryOutcome }
  | { t: 'refused'; pattern: string; error: WireError }
  | { t: 'op'; from: string; rid: string; op: Op; args: unknown[] }
  | { t: 'res'; to: string; rid: string; ok: boolean; value?: unknown; error?: WireError };

interface Waiting {
  op: Op;
  args: unknown[];
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

export function shareAvailable(): boolean {
  const g = globalThis as unknown as { BroadcastChannel?: unknown; navigator?: { locks?: unknown }; document?: unknown };
  return typeof g.BroadcastChannel === 'function' && g.navigator?.locks !== undefined && g.document !== undefined;
}

function toWire(error: unknown): WireError {
  return error instanceof ClientError
    ? { code: error.code, message: error.message, bayeux: error.bayeux }
    : { code: 'disconnected', message: String((error as Error)?.message ?? error), bayeux: undefined };
}

function fromWire(error: WireError | undefined): ClientError {
  return new ClientError(error?.code ?? 'disconnected', error?.message ?? 'failed in the leader tab', error?.bayeux);
}

export class SharedBackend implements Backend {
  state: State = 'disconnected';
  clientId: string | undefined;
  type: ConnectionType | undefined;
  private readonly tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
  private readonly channel: BroadcastChannel;
  private bayeux: Bayeux | null = null;
  /** Leader only: which tabs want each pattern. */
  private readonly refs = new Map<string, Set<string>>();
  /** Operations sent to the leader and not answered yet (sent again to a new leader). */
  private readonly waiting = new Map<string, Waiting>();
  /** Patterns this tab needs, announced again to every new leader. */
  private readonly needs = new Set<string>();
  private readonly extensions: Extension[] = [];
  private wantConnect = false;
  private rid = 0;
  private readonly locks: LockManager;
  private readonly name: string;
  /** Leader only: tabs whose departure it is waiting for. */
  private readonly watched = new Set<string>();

  constructor(
    url: string,
    private readonly make: (events: BackendEvents) => Bayeux,
    private readonly events: BackendEvents,
  ) {
    this.channel = new BroadcastChannel(`perihelion:${url}`);
    this.channel.onmessage = (event: MessageEvent<Wire>) => this.onWire(event.data);
    const g = globalThis as unknown as { navigator: { locks: LockManager }; addEventListener?: (type: string, listener: () => void) => void };
    this.locks = g.navigator.locks;
    this.name = `perihelion:${url}`;
    // The callbacks' promises never settle: the locks are held for the tab's lifetime. The
    // second one only says "this tab is alive": a leader waiting for it learns when the tab is
    // gone, even if it crashed without a word.
    void this.locks.request(this.name, () => this.lead());
    void this.locks.request(`${this.name}:tab:${this.tab}`, () => new Promise<never>(() => {}));
    g.addEventListener?.('pagehide', () => {
      if (!this.bayeux) this.post({ t: 'bye', from: this.tab });
      // The leader ends its session now rather than letting the server expire it: the next
      // leader opens its own at once.
      else void this.bayeux.disconnect();
    });
    this.post({ t: 'hello', from: this.tab });
  }

  /** Whether this tab holds the shared connection. */
  get leading(): boolean {
    return this.bayeux !== null;
  }

  private post(message: Wire): void {
    this.channel.postMessage(message);
  }

  // ------------------------------------------------------------------ leader

  private lead(): Promise<never> {
    const bayeux = this.make({
      deliver: (message) => {
        this.events.deliver(message);
        this.post({ t: 'deliver', message });
      },
      state: (change) => {
        this.mirror(change.state, bayeux.clientId, bayeux.type);
        this.events.state(change);
        // Errors do not survive structured cloning as ClientError; followers get the reason.
        const { error: _error, ...plain } = change;
        this.post({ t: 'state', change: plain, clientId: bayeux.clientId, type: bayeux.type });
      },
      recovery: (pattern, outcome) => {
        this.events.recovery(pattern, outcome);
        this.post({ t: 'recovery', pattern, outcome });
      },
      refused: (pattern, error) => {
        this.refs.delete(pattern);
        this.events.refused(pattern, error);
        this.post({ t: 'refused', pattern, error: toWire(error) });
      },
    });
    this.bayeux = bayeux;
    for (const extension of this.extensions) bayeux.addExtension(extension);
    // This tab's own wishes, and what it had asked of the previous leader, now run here.
    const mine = [...this.waiting.values()];
    this.waiting.clear();
    for (const pattern of this.needs) void this.run(this.tab, 'need', [pattern]).catch(() => {});
    for (const item of mine) this.run(this.tab, item.op, item.args).then(item.resolve, item.reject);
    this.post({ t: 'leader', from: this.tab, state: bayeux.state, clientId: bayeux.clientId, type: bayeux.type });
    if (this.wantConnect || this.needs.size > 0) void bayeux.connect();
    return new Promise<never>(() => {});
  }

  private run(from: string, op: Op, args: unknown[]): Promise<unknown> {
    const bayeux = this.bayeux!;
    if (from !== this.tab && !this.watched.has(from)) {
      this.watched.add(from);
      // Granted only when the tab's own lock is released: the tab closed or crashed.
      void this.locks.request(`${this.name}:tab:${from}`, () => {
        this.watched.delete(from);
        this.forget(from);
      });
    }
    switch (op) {
      case 'connect':
        return bayeux.connect();
      case 'need': {
        const pattern = args[0] as string;
        let tabs = this.refs.get(pattern);
        if (!tabs) this.refs.set(pattern, (tabs = new Set()));
        tabs.add(from);
        void bayeux.connect();
        return bayeux.need(pattern);
      }
      case 'release': {
        const pattern = args[0] as string;
        const tabs = this.refs.get(pattern);
        tabs?.delete(from);
        if (tabs && tabs.size > 0) return Promise.resolve();
        this.refs.delete(pattern);
        return bayeux.release(pattern);
      }
      case 'publish':
        return bayeux.publish(args[0] as string, args[1], args[2] as Record<string, unknown> | undefined);
      case 'call':
        return bayeux.call(args[0] as string, args[1], args[2] as number);
    }
  }

  private forget(tab: string): void {
    for (const [pattern, tabs] of this.refs) {
      if (tabs.delete(tab) && tabs.size === 0) void this.run(tab, 'release', [pattern]).catch(() => {});
    }
  }

  // ------------------------------------------------------------------ both

  private onWire(message: Wire): void {
    if (this.bayeux) {
      const bayeux = this.bayeux;
      if (message.t === 'op') {
        this.run(message.from, message.op, message.args).then(
          (value) => this.post({ t: 'res', to: message.from, rid: message.rid, ok: true, value }),
          (error: unknown) => this.post({ t: 'res', to: message.from, rid: message.rid, ok: false, error: toWire(error) }),
        );
      } else if (message.t === 'hello') {
        this.post({ t: 'leader', from: this.tab, to: message.from, state: bayeux.state, clientId: bayeux.clientId, type: bayeux.type });
      } else if (message.t === 'bye') this.forget(message.from);
      return;
    }
    switch (message.t) {
      case 'leader':
        if (message.to !== undefined && message.to !== this.tab) return;
        this.mirror(message.state, message.clientId, message.type, 'leader changed');
        if (message.to === undefined) {
          // A new leader: it knows nothing of this tab yet.
          for (const pattern of this.needs) this.ask('need', [pattern]).catch(() => {});
          for (const [rid, item] of this.waiting) this.post({ t: 'op', from: this.tab, rid, op: item.op, args: item.args });
        }
        return;
      case 'state':
        this.mirror(message.change.state, message.clientId, message.type, message.change.reason);
        return;
      case 'deliver':
        return this.events.deliver(message.message);
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

  /** A follower's view of the leader's state. */
  private mirror(state: State, clientId: string | undefined, type: ConnectionType | undefined, reason = ''): void {
    this.clientId = clientId;
    this.type = type;
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    if (!this.bayeux) this.events.state({ state, previous, reason, transport: type });
  }

  private ask(op: Op, args: unknown[]): Promise<unknown> {
    if (this.bayeux) return this.run(this.tab, op, args);
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
    // The leader ends the session only when no other tab still uses it.
    if (this.bayeux && this.refs.size === 0) await this.bayeux.disconnect();
  }

  need(pattern: string): Promise<SubscribeOutcome> {
    this.needs.add(pattern);
    return this.ask('need', [pattern]) as Promise<SubscribeOutcome>;
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
    return this.bayeux ? this.bayeux.batch(fn) : fn();
  }

  /** In shared mode extensions run in the tab that holds the connection: add them in every tab. */
  addExtension(extension: Extension): () => void {
    this.extensions.push(extension);
    const remove = this.bayeux?.addExtension(extension);
    return () => {
      const at = this.extensions.indexOf(extension);
      if (at !== -1) this.extensions.splice(at, 1);
      remove?.();
    };
  }
}
