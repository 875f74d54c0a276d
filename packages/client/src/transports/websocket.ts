/**
 * websocket: one JSON array per frame, both ways. The server pushes deliveries as soon as they
 * are due and still answers the held /meta/connect, which serves as a heartbeat. Sends made
 * before the socket opens wait for it; sends made in one turn share a frame.
 */
import type { Message } from '@perihelion/protocol';
import { framesOf } from '../limits.js';
import { parseBatch, type Transport, type TransportContext, type WebSocketLike } from './transport.js';

export class WebSocketTransport implements Transport {
  readonly type = 'websocket' as const;
  private readonly socket: WebSocketLike;
  /** Frames made before the socket opened. */
  private readonly pending: string[] = [];
  /** Messages sent in this turn, to leave in one frame. */
  private readonly batch: Message[] = [];
  private opened = false;
  private closed = false;
  private readonly openTimer: ReturnType<typeof setTimeout>;

  constructor(
    private readonly context: TransportContext,
    openTimeout: number,
  ) {
    const Ctor = context.env.WebSocket!;
    this.socket = new Ctor(context.url.replace(/^http/, 'ws'));
    // A proxy that swallows the upgrade leaves the socket CONNECTING forever.
    this.openTimer = setTimeout(() => this.fail('the WebSocket did not open in time'), openTimeout);
    this.socket.onopen = () => {
      clearTimeout(this.openTimer);
      this.opened = true;
      for (const frame of this.pending.splice(0)) this.socket.send(frame);
      if (!this.closed) this.context.host.opened();
    };
    this.socket.onmessage = (event) => {
      if (this.closed) return;
      let batch: Message[];
      try {
        batch = parseBatch(String(event.data));
      } catch {
        return this.fail('a WebSocket frame was not JSON');
      }
      this.context.host.receive(batch);
    };
    this.socket.onclose = (event) => this.fail(`the WebSocket closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`);
    // Browsers give no detail on errors; the close event follows with the code.
    this.socket.onerror = () => this.fail('the WebSocket failed');
  }

  send(messages: Message[]): void {
    // What is sent in one turn leaves in one frame: the subscribes and the first connect with the
    // handshake, the publishes of a batch with a reply to the server.
    if (this.batch.length === 0) queueMicrotask(() => this.flush());
    this.batch.push(...messages);
  }

  private flush(): void {
    if (this.closed || this.batch.length === 0) return;
    // More than one frame only past the server's limits (a frame past them is refused whole).
    for (const frame of framesOf(this.batch.splice(0), this.context.limits())) {
      if (this.opened) this.socket.send(frame);
      else this.pending.push(frame);
    }
  }

  private fail(reason: string): void {
    if (this.closed) return;
    this.close();
    this.context.host.lost(reason, this.opened);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.openTimer);
    this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
    // Some implementations (Node's ws) report the abort of a CONNECTING socket as an error event
    // and treat an error nobody listens to as fatal.
    this.socket.onerror = () => {};
    try {
      this.socket.close();
    } catch {
      // A socket still CONNECTING throws in some environments; it is abandoned either way.
    }
  }
}
