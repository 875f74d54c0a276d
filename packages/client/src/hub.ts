/**
 * The hub: the one Bayeux session that serves every tab of an origin, wherever it lives (a
 * SharedWorker, or the tab elected leader). Tabs send it operations (subscribe, publish, …) as
 * plain messages and get results, deliveries and state changes back, so the same hub works
 * over a MessagePort and over a BroadcastChannel.
 *
 * It counts subscriptions per tab: the server subscription to a pattern ends only when no tab
 * wants it. A tab that goes away without a word (closed, crashed) is noticed through its
 * liveness lock: every tab holds `<name>:tab:<id>` for its lifetime, and the hub waits for it.
 */
import type { ConnectionType, Message, Position } from '@perihelion/protocol';
import type { Bayeux, State, StateChange, TransportChange } from './bayeux.js';
import type { BackendEvents } from './client.js';
import { ClientError, type ClientErrorCode } from './errors.js';
import type { RecoveryOutcome } from './subscriptions.js';

export type Op = 'connect' | 'need' | 'release' | 'publish' | 'call';

interface WireError {
  code: ClientErrorCode;
  message: string;
  bayeux: string | undefined;
}

/** What a tab tells a SharedWorker hub about the session it should open. */
export interface HubConfig {
  url: string;
  options: Record<string, unknown>;
}

export type Wire =
  | { t: 'hello'; from: string; config?: HubConfig }
  | { t: 'bye'; from: string }
  | { t: 'net'; online: boolean }
  | { t: 'leader'; to?: string; state: State; clientId: string | undefined; type: ConnectionType | undefined }
  | { t: 'state'; change: StateChange; clientId: string | undefined; type: ConnectionType | undefined }
  | { t: 'transport'; change: TransportChange }
  | { t: 'deliver'; message: Message }
  | { t: 'recovery'; pattern: string; outcome: RecoveryOutcome }
  | { t: 'refused'; pattern: string; error: WireError }
  | { t: 'op'; from: string; rid: string; op: Op; args: unknown[] }
  | { t: 'res'; to: string; rid: string; ok: boolean; value?: unknown; error?: WireError };

/** Sends to one tab (`to`) or to every tab. */
export type Send = (message: Wire, to?: string) => void;

function toWire(error: unknown): WireError {
  return error instanceof ClientError
    ? { code: error.code, message: error.message, bayeux: error.bayeux }
    : { code: 'disconnected', message: String((error as Error)?.message ?? error), bayeux: undefined };
}

export function fromWire(error: WireError | undefined): ClientError {
  return new ClientError(error?.code ?? 'disconnected', error?.message ?? 'failed where the connection is held', error?.bayeux);
}

export class Hub {
  readonly bayeux: Bayeux;
  private readonly refs = new Map<string, Set<string>>();
  private readonly watched = new Set<string>();

  constructor(
    make: (events: BackendEvents) => Bayeux,
    private readonly send: Send,
    /** The hub's own tab (leader mode): it hears everything directly. */
    private readonly self: { id: string; events: BackendEvents } | null,
    private readonly locks: LockManager | undefined,
    private readonly name: string,
    /** Told when a tab has gone away. */
    private readonly gone: (tab: string) => void = () => {},
  ) {
    const bayeux = make({
      deliver: (message) => {
        self?.events.deliver(message);
        send({ t: 'deliver', message });
      },
      state: (change) => {
        self?.events.state(change);
        // Errors do not survive structured cloning as ClientError; tabs get the reason.
        const { error: _error, ...plain } = change;
        send({ t: 'state', change: plain, clientId: bayeux.clientId, type: bayeux.type });
      },
      transport: (change) => {
        self?.events.transport(change);
        send({ t: 'transport', change });
      },
      recovery: (pattern, outcome) => {
        self?.events.recovery(pattern, outcome);
        send({ t: 'recovery', pattern, outcome });
      },
      refused: (pattern, error) => {
        this.refs.delete(pattern);
        self?.events.refused(pattern, error);
        send({ t: 'refused', pattern, error: toWire(error) });
      },
    });
    this.bayeux = bayeux;
  }

  /** Announces the hub to every tab (they send their subscriptions and open requests again). */
  announce(to?: string): void {
    const { bayeux } = this;
    this.send({ t: 'leader', ...(to !== undefined ? { to } : {}), state: bayeux.state, clientId: bayeux.clientId, type: bayeux.type }, to);
  }

  /** A message from a tab. */
  handle(message: Wire): void {
    if (message.t === 'op') {
      this.run(message.from, message.op, message.args).then(
        (value) => this.send({ t: 'res', to: message.from, rid: message.rid, ok: true, value }, message.from),
        (error: unknown) => this.send({ t: 'res', to: message.from, rid: message.rid, ok: false, error: toWire(error) }, message.from),
      );
    } else if (message.t === 'hello') this.announce(message.from);
    else if (message.t === 'bye') this.forget(message.from);
    // Tabs pass on the browser's online/offline events: a worker may not get them itself.
    else if (message.t === 'net') this.bayeux.network(message.online);
  }

  run(from: string, op: Op, args: unknown[]): Promise<unknown> {
    const { bayeux } = this;
    if (from !== this.self?.id && !this.watched.has(from) && this.locks) {
      this.watched.add(from);
      // Granted only when the tab's own lock is released: the tab closed or crashed.
      void this.locks.request(`${this.name}:tab:${from}`, () => this.forget(from));
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
        return bayeux.need(pattern, args[1] as Record<string, Position> | undefined);
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

  /** Whether any tab still has a subscription. */
  get used(): boolean {
    return this.refs.size > 0;
  }

  private forget(tab: string): void {
    this.watched.delete(tab);
    for (const [pattern, tabs] of this.refs) {
      if (tabs.delete(tab) && tabs.size === 0) {
        this.refs.delete(pattern);
        void this.bayeux.release(pattern).catch(() => {});
      }
    }
    this.gone(tab);
  }
}
