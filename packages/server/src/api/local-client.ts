/**
 * A local client: a Bayeux client inside the server's own process (`server.localClient()`). It
 * speaks to the core through `process(batch, context)` like every transport does, so its
 * handshake, subscribes and publishes pass the same extensions, authentication, channel rules,
 * rate limits and events as a remote client's; only the wire is missing. Its session is bound to
 * an in-process push line, so it never needs a /meta/connect and never expires while open.
 */
import { META, matches, type Message } from '@perihelion/protocol';
import type { ProcessContext, TransportHost } from '../core/contract.js';
import { RelayLine } from '../core/relay-line.js';
import { PerihelionError } from '../errors.js';

export interface LocalClientOptions {
  /** The handshake's `ext`: what the `authenticate` hook reads (a token, say). */
  ext?: Record<string, unknown>;
  /** Headers the authenticator and extensions see, as if the handshake came over HTTP. */
  headers?: Record<string, string>;
}

export type LocalHandler = (data: unknown, message: Message) => void;

/** A refusal by the server: `code` ERR_REFUSED, `bayeux` the error string the reply carried. */
export class LocalClientRefusal extends PerihelionError {
  constructor(
    readonly bayeux: string,
    what: string,
  ) {
    super('ERR_REFUSED', `${what} refused: ${bayeux}`);
  }
}

/** What the local client needs of the server: the core's entry point, and where to report a handler's failure. */
export interface LocalHost extends TransportHost {
  reportError(error: unknown): void;
}

export class LocalClient {
  private id: string | null = null;
  private connecting: Promise<string> | null = null;
  private readonly handlers = new Map<string, Set<LocalHandler>>();
  private readonly line: InProcessLine;
  private readonly context: ProcessContext;
  private nextId = 0;

  constructor(
    private readonly host: LocalHost,
    private readonly options: LocalClientOptions = {},
  ) {
    this.line = new InProcessLine((payloads) => this.receive(payloads));
    this.context = {
      transport: 'in-process',
      connection: this.line,
      request: { headers: { ...options.headers }, remoteAddress: 'in-process', url: host.options.path },
    };
  }

  /** The session's clientId, once connected. */
  get clientId(): string | null {
    return this.id;
  }

  /** Handshakes (once); every other call does it first when needed. Rejects with ERR_REFUSED when refused. */
  connect(): Promise<string> {
    if (!this.line.open) return Promise.reject(new PerihelionError('ERR_SERVER_CLOSED', 'this local client is disconnected'));
    this.connecting ??= this.handshake().catch((error: unknown) => {
      this.connecting = null;
      throw error;
    });
    return this.connecting;
  }

  /**
   * Subscribes to a channel or pattern; `handler` gets each message's data. Resolves once the
   * server accepted, to a function that removes the handler (and the subscription with the last one).
   */
  async subscribe(pattern: string, handler: LocalHandler): Promise<() => Promise<void>> {
    let set = this.handlers.get(pattern);
    if (!set) {
      await this.send({ channel: META.subscribe, subscription: pattern }, `subscribe to ${pattern}`);
      set = this.handlers.get(pattern);
      if (!set) this.handlers.set(pattern, (set = new Set()));
    }
    set.add(handler);
    const handlers = set;
    return async () => {
      if (!handlers.delete(handler) || handlers.size > 0 || this.handlers.get(pattern) !== handlers) return;
      this.handlers.delete(pattern);
      if (this.line.open) await this.send({ channel: META.unsubscribe, subscription: pattern }, `unsubscribe from ${pattern}`);
    };
  }

  /** Publishes as a client does (the channel rules decide whether it may); resolves once accepted. */
  async publish(channel: string, data: unknown, options: { ext?: Record<string, unknown> } = {}): Promise<void> {
    await this.send({ channel, data, ...(options.ext ? { ext: options.ext } : {}) }, `publish to ${channel}`);
  }

  /** Sends a request on a /service channel and resolves to the answer (CometD's remote call). */
  async request(channel: string, data: unknown): Promise<unknown> {
    const replies = await this.send({ channel, data }, `request on ${channel}`);
    return replies.find((reply) => reply.channel === channel && reply.data !== undefined)?.data;
  }

  /** Ends the session (/meta/disconnect); later calls reject. */
  async disconnect(): Promise<void> {
    if (!this.line.open) return;
    try {
      if (this.id !== null) await this.host.process([{ channel: META.disconnect, clientId: this.id }], this.context);
    } finally {
      this.handlers.clear();
      this.line.close();
    }
  }

  private async handshake(): Promise<string> {
    const message: Message = { channel: META.handshake, version: '1.0', supportedConnectionTypes: [...this.host.options.transports] };
    if (this.options.ext) message.ext = this.options.ext;
    const [reply] = await this.exchange(message);
    if (!reply?.successful || typeof reply.clientId !== 'string') throw new LocalClientRefusal(String(reply?.error ?? 'no reply'), 'handshake');
    this.id = reply.clientId;
    return reply.clientId;
  }

  /** Sends one message of the session and resolves to its replies; an unsuccessful first reply rejects. */
  private async send(message: Message, what: string): Promise<Message[]> {
    const clientId = await this.connect();
    const replies = await this.exchange({ ...message, clientId, id: String(++this.nextId) });
    const [reply] = replies;
    if (!reply?.successful) throw new LocalClientRefusal(String(reply?.error ?? 'no reply'), what);
    return replies;
  }

  private async exchange(message: Message): Promise<Message[]> {
    const out = await this.host.process([message], this.context);
    return out.map((text) => JSON.parse(text) as Message);
  }

  /** Messages pushed to the session: each goes to the handlers of every pattern it matches. */
  private receive(payloads: readonly string[]): void {
    for (const payload of payloads) {
      const message = JSON.parse(payload) as Message;
      if (message.channel.startsWith('/meta/')) continue;
      for (const [pattern, handlers] of this.handlers) {
        if (!matches(pattern, message.channel)) continue;
        for (const handler of handlers) {
          try {
            handler(message.data, message);
          } catch (error) {
            this.host.reportError(error);
          }
        }
      }
    }
  }
}

/**
 * The push line of a local client: what the server writes is handed over in a later microtask,
 * so that a handler never runs inside the server's flush.
 */
class InProcessLine extends RelayLine {
  constructor(private readonly deliver: (payloads: readonly string[]) => void) {
    super('in-process');
  }

  protected relay(serialised: string[]): void {
    queueMicrotask(() => this.deliver(serialised));
  }

  sessionEnded(): void {
    this.close();
  }
}
