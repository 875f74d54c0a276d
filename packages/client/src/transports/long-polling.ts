/**
 * long-polling: every batch is a POST of a JSON array; the answer is the JSON array of replies
 * and deliveries. A lone /meta/connect is held by the server, so it travels on its own request;
 * everything else shares at most one other request at a time (Bayeux §HTTP: a client needs no
 * more than two connections), later messages waiting for it and then leaving together.
 */
import type { ConnectionType, Message } from '@perihelion/protocol';
import { framesOf } from '../limits.js';
import { parseBatch, type Transport, type TransportContext } from './transport.js';

export class LongPolling implements Transport {
  readonly type: ConnectionType = 'long-polling';
  private readonly aborts = new Set<AbortController>();
  private busy = false;
  private waiting: Message[] = [];
  /** Requests already framed, waiting for the one in flight. */
  private pendingBodies: string[] = [];
  private closed = false;
  private opened = false;

  constructor(protected readonly context: TransportContext) {}

  send(messages: Message[]): void {
    const connect = messages.length === 1 && messages[0]!.channel === '/meta/connect';
    if (connect) return void this.post(JSON.stringify(messages));
    if (this.busy) {
      this.waiting.push(...messages);
      return;
    }
    // Past the server's limits, the first request that fits now and the rest after it.
    const [first, ...rest] = this.frames(messages);
    if (first === undefined) return;
    this.busy = true;
    this.pendingBodies.push(...rest);
    void this.post(first).finally(() => this.next());
  }

  /** The bodies of the fewest requests (in order) that carry `messages` within the server's limits. */
  protected frames(messages: Message[]): string[] {
    return framesOf(messages, this.context.limits());
  }

  private next(): void {
    this.busy = false;
    if (this.closed) return;
    const body = this.pendingBodies.shift();
    if (body !== undefined) {
      this.busy = true;
      void this.post(body).finally(() => this.next());
      return;
    }
    if (this.waiting.length === 0) return;
    const batch = this.waiting;
    this.waiting = [];
    this.send(batch);
  }

  /** Sends one request of `body`, a JSON array of messages. */
  protected async post(body: string): Promise<void> {
    const abort = new AbortController();
    this.aborts.add(abort);
    try {
      const response = await this.context.http.request(this.context.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body,
        signal: abort.signal,
      });
      const text = await response.text();
      if (this.closed) return;
      // The server answers every Bayeux outcome with 200 and a JSON array; 4xx/5xx bodies are
      // JSON arrays too (one error message), which the client reads like any reply.
      let batch: Message[];
      try {
        batch = parseBatch(text);
      } catch {
        throw new Error(`HTTP ${response.status}: not a Bayeux answer`);
      }
      this.opened = true;
      this.context.host.receive(batch);
    } catch (error) {
      if (!this.closed) {
        this.close();
        this.context.host.lost(`long-polling request failed: ${(error as Error).message}`, this.opened);
      }
    } finally {
      this.aborts.delete(abort);
    }
  }

  close(): void {
    this.closed = true;
    this.waiting = [];
    this.pendingBodies = [];
    for (const abort of this.aborts) abort.abort();
    this.aborts.clear();
  }
}
