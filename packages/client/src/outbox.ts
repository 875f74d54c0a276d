/**
 * The outbox: publishes, service requests, subscribes and unsubscribes on their way to the
 * server, each waiting for the reply with its id.
 *
 * Offline, they wait here (publishes and requests up to `maxQueued`). A publish waits as long as
 * it takes and its timeout counts from sending; a request's timeout counts from the call, so one
 * still waiting here when it expires is rejected and taken out, never sent. Connected, everything
 * issued in the same turn, or while a `batch()` runs, leaves in one request (one frame), or in as
 * few as the server's limits allow (limits.ts); a message that could fit none is refused here,
 * as the server would refuse it, instead of being sent to a refusal that names no message. A line
 * that dies under them takes no publish with it: each leaves again on the next line with the
 * same id, and the server drops one it already has from the same session. Subscribes and
 * unsubscribes are not sent again from here: the subscription registry decides what it still
 * wants, with positions that are fresh by then.
 */
import type { Message } from '@perihelion/protocol';
import type { State } from './bayeux.js';
import { ClientError } from './errors.js';
import { unsendable, type FrameLimits } from './limits.js';
import type { ResolvedOptions } from './options.js';
import type { Transport } from './transports/transport.js';

type Kind = 'publish' | 'request' | 'subscribe' | 'unsubscribe';

interface Outgoing {
  message: Message & { id: string };
  kind: Kind;
  timeout: number;
  settle(reply: Message | ClientError): void;
  timer?: ReturnType<typeof setTimeout>;
}

/** What the outbox reads of the session: whether and where it may send. */
export interface OutboxSession {
  readonly state: State;
  readonly clientId: string | undefined;
  readonly line: Transport | null;
  /** The next message id; one sequence for every message of the session, meta ones included. */
  nextId(): string;
  /** The outgoing extensions' version of `message`; null when one of them dropped it. */
  outgoing(message: Message): Message | null;
  /** What one request or frame may carry. */
  readonly limits: FrameLimits;
}

export class Outbox {
  private readonly queue: Outgoing[] = [];
  private readonly inflight = new Map<string, Outgoing>();
  private flushQueued = false;
  private batchDepth = 0;

  constructor(
    private readonly session: OutboxSession,
    private readonly options: ResolvedOptions,
  ) {}

  /** Whether something sent awaits its reply. */
  get busy(): boolean {
    return this.inflight.size > 0;
  }

  publish(channel: string, data: unknown, ext: Record<string, unknown> | undefined): Promise<Message> {
    return new Promise((resolve, reject) => {
      this.enqueue('publish', { channel, data, ...(ext ? { ext } : {}) }, this.options.timeout, (reply) => {
        if (reply instanceof ClientError) reject(reply);
        else if (reply.successful === false) reject(ClientError.fromReply(reply));
        else resolve(reply);
      });
    });
  }

  /** A service call: the publish acknowledgement, then a reply with the same id carrying data. */
  call(channel: string, data: unknown, timeout: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.enqueue('request', { channel, data }, timeout, (reply) => {
        if (reply instanceof ClientError) reject(reply);
        else if (reply.successful === false) reject(ClientError.fromReply(reply));
        else resolve(reply.data);
      });
    });
  }

  /**
   * Sends `message` once connected. `settle` gets its reply, or the ClientError that ends its
   * wait: `timeout` (no reply within `timeout` ms of sending; for a request, of this call),
   * `queue-full`, a `bayeux` error when an extension dropped it, or the one the client stopped with.
   */
  enqueue(kind: Kind, message: Message, timeout: number, settle: (reply: Message | ClientError) => void): void {
    const item: Outgoing = { kind, message: { ...message, id: this.session.nextId() }, timeout, settle };
    // The bound is for what waits offline; connected, the queue is sent at the end of the turn.
    if ((kind === 'publish' || kind === 'request') && this.session.state !== 'connected') {
      const queued = this.queue.filter((o) => o.kind === 'publish' || o.kind === 'request').length;
      if (queued >= this.options.maxQueued) {
        return settle(new ClientError('queue-full', `${queued} messages are already waiting to be sent (maxQueued); this one was not queued`));
      }
    }
    // The caller of a request waits for an answer, not for the network: its time runs from now.
    if (kind === 'request') item.timer = setTimeout(() => this.expire(item), timeout);
    this.queue.push(item);
    this.scheduleFlush();
  }

  /** No reply in time: `item` stops waiting, and leaves the queue if it had not been sent yet. */
  private expire(item: Outgoing): void {
    const queued = this.queue.indexOf(item);
    if (queued >= 0) this.queue.splice(queued, 1);
    this.inflight.delete(item.message.id);
    item.settle(new ClientError('timeout', `no reply to ${item.message.channel} within ${item.timeout} ms`));
  }

  scheduleFlush(): void {
    if (this.flushQueued || this.batchDepth > 0 || this.session.state !== 'connected') return;
    this.flushQueued = true;
    // Everything issued in the same turn leaves in one request (or one frame).
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    const { session } = this;
    const line = session.line;
    if (session.state !== 'connected' || !line || session.clientId === undefined || this.batchDepth > 0) return;
    const batch: Message[] = [];
    for (const item of this.queue.splice(0)) this.takeOff(item, { ...item.message, clientId: session.clientId }, batch);
    if (batch.length > 0) line.send(batch);
  }

  /**
   * Sends the subscribes waiting now on `line` at once, in the frame of the handshake just sent
   * there (a bundled set-up, docs/protocol.md): they carry no clientId, the server gives them its
   * new session's. Publishes and requests wait for the session as usual.
   */
  sendWithHandshake(line: Transport): void {
    const batch: Message[] = [];
    // As many as fit the handshake's frame with it and the first connect (the server would give
    // later frames no session); the rest wait for the session as usual.
    const { maxBatch, maxRequestBytes } = this.session.limits;
    let bytes = 1024;
    for (const item of this.queue.filter((o) => o.kind === 'subscribe')) {
      bytes += JSON.stringify(item.message).length * 3;
      if (batch.length + 2 >= maxBatch || bytes > maxRequestBytes) break;
      this.queue.splice(this.queue.indexOf(item), 1);
      this.takeOff(item, item.message, batch);
    }
    if (batch.length > 0) line.send(batch);
  }

  /**
   * The server did not take the bundled set-up: it ignored the subscribes sent with the handshake
   * (Bayeux §4.1.1), so no reply is coming (the registry asks for them again). No other
   * subscribe can be in flight then: the line before the handshake took its own with it.
   */
  forgetSubscribes(): void {
    for (const [id, item] of this.inflight) {
      if (item.kind === 'subscribe') {
        this.inflight.delete(id);
        clearTimeout(item.timer);
      }
    }
  }

  /** Puts `item` (as `message`) in `batch` and awaits its reply, unless an outgoing extension drops it. */
  private takeOff(item: Outgoing, message: Message, batch: Message[]): void {
    const out = this.session.outgoing(message);
    if (!out) {
      item.settle(new ClientError('bayeux', `${item.message.channel}: dropped by an outgoing extension`, ''));
      return;
    }
    const why = item.kind === 'publish' || item.kind === 'request' ? unsendable(out, this.session.limits) : null;
    if (why !== null) {
      const [code, reason] = why;
      item.settle(new ClientError('bayeux', `${item.message.channel}: the message is ${reason}`, `${code}:${item.message.channel}:${reason}`));
      return;
    }
    this.inflight.set(item.message.id, item);
    // A request's timer has run since the call (enqueue), and goes on across lost lines.
    if (item.kind !== 'request') item.timer = setTimeout(() => this.expire(item), item.timeout);
    batch.push(out);
  }

  /**
   * Holds every message issued while `fn` runs and sends them in one request. When `fn` returns
   * a promise the batch lasts until it settles, so `fn` must not wait for replies to its own
   * messages (they are sent only after it).
   */
  batch<T>(fn: () => T): T {
    this.batchDepth++;
    let result: T;
    try {
      result = fn();
    } catch (error) {
      this.endBatch();
      throw error;
    }
    if (result instanceof Promise) {
      result.then(
        () => this.endBatch(),
        () => this.endBatch(),
      );
    } else this.endBatch();
    return result;
  }

  private endBatch(): void {
    this.batchDepth--;
    this.scheduleFlush();
  }

  /** Settles what waits for `message` (its reply, by id): true when the message was such a reply. */
  answer(id: string | undefined, message: Message): boolean {
    const item = id === undefined ? undefined : this.inflight.get(id);
    if (!item || message.channel !== item.message.channel || (message.successful === undefined && message.data === undefined)) return false;
    // A service call gets its acknowledgement (no data) and then its answer (data).
    if (item.kind === 'request' && message.data === undefined && message.successful !== false) return true;
    this.inflight.delete(id!);
    clearTimeout(item.timer);
    item.settle(message);
    return true;
  }

  /**
   * The line died under what was in flight: publishes and requests wait for the next line, in
   * their first order. Returns the patterns whose subscribes it took with it.
   */
  lineLost(): string[] {
    const requeue = [...this.inflight.values()];
    const subscribes: string[] = [];
    this.inflight.clear();
    for (const item of requeue) {
      if (item.kind !== 'request') clearTimeout(item.timer);
      if (item.kind === 'subscribe') subscribes.push(item.message.subscription as string);
      // Sent again with the same id after reconnecting: the server drops a publish it already has.
      else if (item.kind !== 'unsubscribe') this.queue.unshift(item);
      // The registry asks again once connected (it keeps what the server may still hold).
      else item.settle(new ClientError('disconnected', 'the line was lost before the unsubscribe was answered'));
    }
    this.queue.sort((a, b) => Number(a.message.id) - Number(b.message.id));
    return subscribes;
  }

  /**
   * A new session: the subscribes and unsubscribes still waiting were meant for the old one. An
   * unsubscribe is settled as done: the new session holds nothing to drop.
   */
  dropSubscribes(): void {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const item = this.queue[i]!;
      if (item.kind !== 'subscribe' && item.kind !== 'unsubscribe') continue;
      this.queue.splice(i, 1);
      if (item.kind === 'unsubscribe') item.settle({ channel: item.message.channel, successful: true });
    }
  }

  /** The client stops: everything waiting or in flight fails with `error`. */
  fail(error: ClientError): void {
    for (const item of [...this.queue.splice(0), ...this.inflight.values()]) {
      clearTimeout(item.timer);
      item.settle(error);
    }
    this.inflight.clear();
  }
}
