/**
 * The contract between the client and one wire technique. A transport instance is one line
 * generation: when it fails the client drops it and makes a new one, so no transport needs
 * reconnect logic of its own. Transports know nothing about channels or sessions; they move
 * arrays of Bayeux messages and report what arrives and what failed.
 */
import type { ConnectionType, Message } from '@perihelion/protocol';
import type { FrameLimits } from '../limits.js';

interface TransportHost {
  /** Messages from the server: replies and deliveries, in wire order. */
  receive(messages: Message[]): void;
  /** The line is gone (socket closed, request failed, stream ended); `opened` tells whether it ever worked. */
  lost(reason: string, opened: boolean): void;
  /** A WebSocket's socket opened: the line works (the other types prove it by their first answer). */
  opened(): void;
}

/**
 * A handler the socket calls with its event. Declared as a method, so that a WebSocket whose
 * handlers take richer events (Node's `ws`, the browser's) is accepted as it is.
 */
type Handler<E> = { handle(event: E): void }['handle'];

/** What the client uses of a WebSocket: the browser's has it, and so has the `ws` package's. */
export interface WebSocketLike {
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Constructors and functions taken from the environment or from the options (never imported). */
export interface Environment {
  fetch: typeof fetch | undefined;
  WebSocket: WebSocketConstructor | undefined;
  EventSource: (new (url: string, init?: EventSourceInit) => EventSource) | undefined;
  /** Whether this is a browser page (cookies, script tags, same-origin checks). */
  document: Document | undefined;
}

export interface Transport {
  readonly type: ConnectionType;
  /** Sends one batch. Replies come through `host.receive`; a failure through `host.lost`. */
  send(messages: Message[]): void;
  /**
   * Streamed types only: opens the push line for the session; resolves when its first frame
   * arrives. Once open, a line that carries nothing for `silence` ms is reported lost.
   */
  openStream?(clientId: string, silence: number): Promise<void>;
  /** Ends the line and every request in flight, without reporting them as lost. */
  close(): void;
}

export interface TransportContext {
  url: string;
  env: Environment;
  host: TransportHost;
  http: Http;
  /** What one request or frame may carry (the server's, once its handshake reply said). */
  limits(): FrameLimits;
}

/**
 * HTTP requests with the session cookie. In a browser `credentials: "include"` makes the browser
 * keep and send `BAYEUX_BROWSER` (the server binds sessions to it); elsewhere (Node) there is no
 * cookie store, so this keeps the server's cookies itself and sends them back.
 */
export class Http {
  private readonly jar = new Map<string, string>();

  constructor(
    private readonly fetchFn: typeof fetch,
    private readonly browser: boolean,
    private readonly headers: Record<string, string>,
  ) {}

  async request(url: string, init: RequestInit & { headers?: Record<string, string> }): Promise<Response> {
    const headers: Record<string, string> = { ...this.headers, ...init.headers };
    if (!this.browser && this.jar.size > 0) {
      // The application's own cookies (a Cookie in `headers`: its login, say) go along with the server's.
      const own = headers.Cookie ?? headers.cookie;
      delete headers.cookie;
      headers.Cookie = [own, ...[...this.jar].map(([k, v]) => `${k}=${v}`)].filter(Boolean).join('; ');
    }
    const response = await this.fetchFn(url, { ...init, headers, credentials: 'include', cache: 'no-store' });
    if (!this.browser) {
      const lines = (response.headers as Headers & { getSetCookie?: () => string[] }).getSetCookie?.() ?? [];
      for (const line of lines) {
        const pair = line.split(';')[0] ?? '';
        const eq = pair.indexOf('=');
        if (eq > 0) this.jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
      }
    }
    return response;
  }

  /**
   * Outside browsers: a `fetch` that carries the cookies kept for the server and the extra
   * headers, for an EventSource that takes one (the `eventsource` package's `init.fetch`), so
   * that its stream speaks for a session bound to its cookie. Browsers send cookies themselves.
   */
  fetchWithCookies(): typeof fetch | undefined {
    if (this.browser) return undefined;
    return (input, init = {}) => {
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((value, key) => (headers[key] = value));
      return this.request(typeof input === 'object' && 'url' in input ? input.url : String(input), { ...init, headers });
    };
  }
}

/** Parses a JSON batch from the server; a single object counts as a batch of one. */
export function parseBatch(text: string): Message[] {
  const value: unknown = JSON.parse(text);
  const list = Array.isArray(value) ? value : [value];
  return list.filter((m): m is Message => typeof m === 'object' && m !== null && typeof (m as Message).channel === 'string');
}
