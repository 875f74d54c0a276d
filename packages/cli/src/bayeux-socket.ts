/**
 * A minimal Bayeux client over WebSocket: one session on one socket at a time. It handshakes,
 * keeps one /meta/connect outstanding (the server holds it up to its advice.timeout), subscribes,
 * hands every delivered message to `onMessage` in order, and follows the server's advice:
 *
 * - a reply with `reconnect: "handshake"` (a session the server no longer knows): handshake again
 *   and subscribe again;
 * - an unsuccessful reply with `reconnect: "none"` (the server refuses the client), or a refused
 *   subscription: `run()` fails with a BayeuxRefusal;
 * - a held connect answered successfully with `reconnect: "none"`: the server ended the session
 *   (`/api/disconnect`, `session.disconnect()`), not refused the client, so a new session is
 *   started, as a long-running subscriber should;
 * - the socket closed, or a reply overdue: a new socket after 1 s, 2 s, 4 s, 8 s, then every 10 s
 *   (counting from 1 s again once a line has stayed up 10 s), going on with the same session when
 *   the server still has it (its messages waited in the session's queue) and with a new one otherwise.
 *
 * Only the first socket is not retried: when it cannot be opened at all, `run()` fails with
 * EndpointUnreachable, so that a wrong address is reported rather than retried forever.
 *
 * Every frame is a JSON array (BAYEUX.md A42); requests go one message per frame and replies are
 * paired with requests by id (A3).
 */
import { WebSocket, type RawData } from 'ws';
import { BAYEUX_VERSION, META, type Advice, type Ext, type Message } from '@perihelion/protocol';

export interface Delivery {
  channel: string;
  data: unknown;
  ext?: Ext;
}

export interface BayeuxSocketOptions {
  /** The Bayeux endpoint: `ws://host:port/bayeux` or `wss://…`. */
  url: string;
  /** Channels and patterns to subscribe to; subscribed again in every new session. */
  subscriptions: readonly string[];
  /** `ext` of every handshake, e.g. `{ token }`. */
  handshakeExt?: Ext;
  /** Every delivered message, in the order the server sent them. */
  onMessage: (delivery: Delivery) => void;
  /** What the session is doing, in words: connecting, subscribed, reconnecting in 2 s, … */
  onStatus?: (line: string) => void;
  /** Allowance for the network on top of how long the server may hold a reply, ms (default 10000). */
  networkDelay?: number;
  /** The wait before the n-th retry in a row (n from 0), ms (default 1 s, 2 s, 4 s, 8 s, then 10 s). */
  backoff?: (attempt: number) => number;
}

/** The server refused for good: advice `reconnect: "none"` on a failed reply, or a refused subscription. */
export class BayeuxRefusal extends Error {
  constructor(
    what: string,
    readonly reply: Message,
  ) {
    super(`${what}: ${reply.error ?? 'refused by the server'}`);
    this.name = 'BayeuxRefusal';
  }
}

/** The first socket could not be opened (nothing listens there, or no WebSocket endpoint at that path). */
export class EndpointUnreachable extends Error {
  constructor(
    readonly url: string,
    cause: unknown,
  ) {
    super(`cannot open a WebSocket to ${url}`, { cause });
    this.name = 'EndpointUnreachable';
  }
}

/** The socket closed, or a reply is overdue: a new socket may help. */
class LineLost extends Error {}

interface Pending {
  resolve(reply: Message): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** How long the server holds a connect until its advice says otherwise (its default timeout). */
const DEFAULT_SERVER_TIMEOUT = 30_000;
/** A line that stays up this long resets the retry count. */
const STEADY_MS = 10_000;
const DISCONNECT_WAIT = 2_000;
const CLOSE_WAIT = 1_000;

export function defaultBackoff(attempt: number): number {
  return Math.min(1000 * 2 ** attempt, 10_000);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(1))} s`;
}

export class BayeuxSocket {
  private socket: WebSocket | null = null;
  private clientId: string | null = null;
  private readonly pending = new Map<string, Pending>();
  private lastId = 0;
  /** The server's advice.timeout: how long it may hold a connect, ms. */
  private serverTimeout = DEFAULT_SERVER_TIMEOUT;
  /** The server's advice.interval: the pause between connects, ms. */
  private interval = 0;
  private retries = 0;
  private steadySince = 0;
  private stopping = false;
  private wake: (() => void) | null = null;
  private running: Promise<void> | null = null;

  constructor(private readonly options: BayeuxSocketOptions) {}

  /** The current session's clientId, null between sessions. */
  get sessionId(): string | null {
    return this.clientId;
  }

  /**
   * Runs the session until `stop()`. Rejects with BayeuxRefusal when the server refuses the
   * client or a subscription, and with EndpointUnreachable when the first socket cannot be opened.
   */
  run(): Promise<void> {
    this.running ??= this.loop().finally(() => this.closeLine());
    return this.running;
  }

  /** Ends the session with /meta/disconnect (when there is one and the line is up) and closes the socket. */
  async stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.wake?.();
      const clientId = this.clientId;
      if (clientId !== null && this.socket?.readyState === WebSocket.OPEN) {
        this.status('disconnecting');
        try {
          await this.request({ channel: META.disconnect, clientId }, DISCONNECT_WAIT);
        } catch {
          // The line is going anyway; the server sweeps the session.
        }
      }
      this.clientId = null;
      await this.closeLine();
    }
    await this.running?.catch(() => {});
  }

  private status(line: string): void {
    this.options.onStatus?.(line);
  }

  private get networkDelay(): number {
    return this.options.networkDelay ?? 10_000;
  }

  private async loop(): Promise<void> {
    let everOpened = false;
    while (!this.stopping) {
      try {
        this.status(`connecting to ${this.options.url}`);
        await this.openLine();
        everOpened = true;
        await this.session();
      } catch (error) {
        if (!(error instanceof LineLost)) throw error;
        if (this.stopping) return;
        if (!everOpened) throw new EndpointUnreachable(this.options.url, error.cause ?? error);
        await this.pause(this.nextBackoff(), `${error.message}; reconnecting`);
      }
    }
  }

  /** One open line: handshake when there is no session, connect, subscribe, then held connects. */
  private async session(): Promise<void> {
    while (!this.stopping) {
      let fresh = false;
      if (this.clientId === null) {
        await this.handshake();
        fresh = true;
      }
      // The first connect of a session or of a line is answered at once (advice timeout 0).
      if (this.stopping || (await this.connect(true)) === 'handshake') continue;
      if (fresh && !(await this.subscribeAll())) continue;
      while (!this.stopping && (await this.connect(false)) === 'again');
    }
  }

  private async handshake(): Promise<void> {
    while (!this.stopping) {
      const message: Message = { channel: META.handshake, version: BAYEUX_VERSION, supportedConnectionTypes: ['websocket'] };
      if (this.options.handshakeExt !== undefined) message.ext = this.options.handshakeExt;
      const reply = await this.request(message);
      this.learn(reply.advice);
      if (reply.successful === true && typeof reply.clientId === 'string') {
        this.clientId = reply.clientId;
        this.status(`session ${reply.clientId}`);
        return;
      }
      if (reply.advice?.reconnect === 'none') throw new BayeuxRefusal('handshake refused', reply);
      const wait = Math.max(reply.advice?.interval ?? 0, this.nextBackoff());
      await this.pause(wait, `handshake failed (${reply.error ?? 'no reason given'}); trying again`);
    }
  }

  /** One /meta/connect: 'again' to go on connecting, 'handshake' when a new session is needed. */
  private async connect(first: boolean): Promise<'again' | 'handshake'> {
    const clientId = this.clientId;
    if (clientId === null) return 'handshake';
    const message: Message = { channel: META.connect, clientId, connectionType: 'websocket' };
    if (first) message.advice = { timeout: 0 };
    const reply = await this.request(message, (first ? 0 : this.serverTimeout) + this.networkDelay);
    if (this.stopping) return 'again';
    this.learn(reply.advice);
    const reconnect = reply.advice?.reconnect;
    if (reply.successful === true) {
      if (this.steadySince === 0) this.steadySince = Date.now();
      if (reconnect === 'none' || reconnect === 'handshake') {
        this.clientId = null;
        const why = reconnect === 'none' ? 'the server ended the session' : 'the server asks for a new session';
        await this.pause(this.nextBackoff(), `${why}; starting a new one`);
        return 'handshake';
      }
      if (this.interval > 0) await this.pause(this.interval);
      return 'again';
    }
    if (reconnect === 'none') throw new BayeuxRefusal('connect refused', reply);
    if (reconnect === 'handshake') {
      this.clientId = null;
      await this.pause(reply.advice?.interval ?? 0, `${reply.error ?? 'the session is gone'}; handshaking again`);
      return 'handshake';
    }
    await this.pause(Math.max(this.interval, this.nextBackoff()), `connect failed (${reply.error ?? 'no reason given'}); retrying`);
    return 'again';
  }

  /** Subscribes a new session; false when the session is already gone and a handshake is due. */
  private async subscribeAll(): Promise<boolean> {
    for (const subscription of this.options.subscriptions) {
      const clientId = this.clientId;
      if (clientId === null || this.stopping) return false;
      const reply = await this.request({ channel: META.subscribe, clientId, subscription });
      if (reply.successful === true) {
        this.status(`subscribed to ${subscription}`);
        continue;
      }
      if (reply.advice?.reconnect === 'handshake') {
        this.clientId = null;
        return false;
      }
      throw new BayeuxRefusal(`subscription to ${subscription} refused`, reply);
    }
    return true;
  }

  /** Newer advice supersedes older (BAYEUX.md A27). */
  private learn(advice: Advice | undefined): void {
    if (typeof advice?.timeout === 'number' && advice.timeout >= 0) this.serverTimeout = advice.timeout;
    if (typeof advice?.interval === 'number') this.interval = Math.max(0, advice.interval);
  }

  private nextBackoff(): number {
    if (this.steadySince > 0 && Date.now() - this.steadySince >= STEADY_MS) this.retries = 0;
    this.steadySince = 0;
    return (this.options.backoff ?? defaultBackoff)(this.retries++);
  }

  /** Waits `ms` (cut short by stop()), saying why when there is a reason worth reporting. */
  private pause(ms: number, why?: string): Promise<void> {
    if (why !== undefined) this.status(ms > 0 ? `${why} in ${seconds(ms)}` : why);
    if (ms <= 0 || this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  private request(message: Message, wait = this.networkDelay): Promise<Message> {
    const socket = this.socket;
    if (socket === null || socket.readyState !== WebSocket.OPEN) return Promise.reject(new LineLost('the connection is closed'));
    const id = String(++this.lastId);
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new LineLost(`no reply to ${message.channel} within ${seconds(wait)}`));
        // A line that stops answering is dead, whatever TCP still thinks.
        socket.terminate();
      }, wait);
      this.pending.set(id, { resolve, reject, timer });
      socket.send(JSON.stringify([{ ...message, id }]));
    });
  }

  private openLine(): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.options.url, { perMessageDeflate: false, handshakeTimeout: this.networkDelay });
      this.socket = socket;
      let open = false;
      socket.on('open', () => {
        open = true;
        resolve();
      });
      socket.on('message', (data, isBinary) => {
        if (!isBinary) this.receive(data);
      });
      // Before 'open' this is why the line could not be opened; after it, 'close' follows.
      socket.on('error', (error) => {
        if (!open) reject(new LineLost(error.message || 'cannot connect', { cause: error }));
      });
      socket.on('close', (code, reason) => {
        if (this.socket === socket) this.socket = null;
        const lost = new LineLost(`the connection closed (${code}${reason.length > 0 ? ` ${reason.toString()}` : ''})`);
        for (const waiting of this.pending.values()) {
          clearTimeout(waiting.timer);
          waiting.reject(lost);
        }
        this.pending.clear();
        if (!open) reject(lost);
      });
    });
  }

  private closeLine(): Promise<void> {
    const socket = this.socket;
    if (socket === null || socket.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => socket.terminate(), CLOSE_WAIT);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      if (socket.readyState === WebSocket.CONNECTING) socket.terminate();
      else socket.close(1000);
    });
  }

  private receive(data: RawData): void {
    let batch: unknown;
    try {
      const bytes = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      batch = JSON.parse(bytes.toString('utf8'));
    } catch {
      this.status('ignored a frame that is not JSON');
      return;
    }
    for (const message of Array.isArray(batch) ? batch : [batch]) {
      if (!isRecord(message) || typeof message.channel !== 'string') continue;
      const channel = message.channel;
      if (channel.startsWith('/meta/')) {
        const id = typeof message.id === 'string' || typeof message.id === 'number' ? String(message.id) : undefined;
        const waiting = id === undefined ? undefined : this.pending.get(id);
        if (waiting !== undefined && id !== undefined) {
          clearTimeout(waiting.timer);
          this.pending.delete(id);
          waiting.resolve(message as Message);
        } else if (typeof message.error === 'string') {
          this.status(`the server says: ${message.error}`);
        }
        continue;
      }
      // Replies to publishes carry no data; deliveries always do (BAYEUX.md A33).
      if (message.data === undefined) continue;
      const delivery: Delivery = { channel, data: message.data };
      if (isRecord(message.ext)) delivery.ext = message.ext;
      this.options.onMessage(delivery);
    }
  }
}
