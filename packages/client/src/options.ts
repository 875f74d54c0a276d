/**
 * The client's options: defaults, checks, and the part a SharedWorker can receive (functions
 * and constructors cannot cross to a worker).
 */
import { isConnectionType, type ConnectionType } from '@perihelion/protocol';
import type { HubConfig } from './hub.js';
import type { Environment, WebSocketConstructor } from './transports/transport.js';

export interface ClientOptions {
  /**
   * Connection types in order of preference; the first one the server also offers (and this
   * environment supports) is used, the next when it fails.
   * Default: `["websocket", "eventsource", "http-streaming", "long-polling", "callback-polling"]`
   * (callback-polling is tried only by a page on another origin than the server, unless listed here).
   */
  transports?: ConnectionType[];
  /**
   * Milliseconds to wait for the reply to a message (handshake, subscribe, publish, a connect
   * answered at once), counted from sending; the default of `request()`'s timeout, which counts
   * from the call. Default: 10000.
   */
  timeout?: number;
  /**
   * Milliseconds a line may stay silent beyond the server's hold (`advice.timeout`) before it is
   * taken for dead and replaced: a held connect with no reply, or a stream (eventsource,
   * http-streaming) that carried nothing, not even the server's heartbeat, for `advice.timeout +
   * lineTimeout`. It catches lines that die without a close (a NAT or proxy that forgets them).
   * Default: the `timeout` option (10000).
   */
  lineTimeout?: number;
  /** Milliseconds a WebSocket may take to open before the next transport is tried. Default: 5000. */
  openTimeout?: number;
  /** Milliseconds a stream (eventsource, http-streaming) may take to deliver its first frame before it is taken as buffered by a proxy and abandoned for long-polling. Default: 5000. */
  streamTimeout?: number;
  /**
   * Milliseconds after which a connection type that failed here (a refused WebSocket upgrade, a
   * stream a proxy buffers) is tried again (plus up to half again, at random): by the next
   * handshake, and, for a WebSocket, by a live session on another type, which moves to it without
   * a new handshake when it opens. Default: 60000; 0: not until every type has failed.
   */
  transportRetry?: number;
  /** Backoff between reconnection attempts: full jitter in [0, min(max, min·2ⁿ)], never below the server's advice.interval. Defaults: 500 and 20000 ms. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Most publishes and requests kept while offline; beyond, publish() rejects with `queue-full`. Default: 100. */
  maxQueued?: number;
  /** Credentials for the handshake (`ext.token`): a string, or a function asked at every handshake. Default: none. */
  token?: string | (() => string | undefined | Promise<string | undefined>);
  /** Extra headers on HTTP requests (not possible on WebSocket or EventSource). Default: none. */
  headers?: Record<string, string>;
  /**
   * One connection for every tab of the origin (a SharedWorker, else a leader tab elected with Web
   * Locks + BroadcastChannel); a tab the browser denies the locks (site data blocked) connects
   * alone, as with `false`. Default: true in browsers.
   */
  shared?: boolean;
  /**
   * Script of the SharedWorker that holds the shared connection. Default: `<url>/client.js` (the
   * server's own build) when the page and the server share an origin and the options can cross
   * to a worker (no `token` function, no custom constructors); false: elect a leader tab instead.
   */
  worker?: string | false;
  /** Connect on the first subscribe() or publish() without waiting for connect(). Default: true. */
  autoConnect?: boolean;
  /** Constructors from the environment, for runtimes without them (Node: `WebSocket` from the `ws` package). Default: globalThis's. */
  WebSocket?: WebSocketConstructor;
  fetch?: typeof fetch;
  EventSource?: new (url: string, init?: EventSourceInit) => EventSource;
}

/** The options as the session uses them: every default applied. */
export interface ResolvedOptions {
  transports: ConnectionType[];
  timeout: number;
  /** Silence allowed on a line beyond the server's hold before it is taken for dead. */
  lineTimeout: number;
  openTimeout: number;
  streamTimeout: number;
  transportRetry: number;
  minReconnectDelay: number;
  maxReconnectDelay: number;
  maxQueued: number;
  /** Whether JSONP may be tried: the page is on another origin, or the application listed it. */
  callbackPolling: boolean;
  token: string | (() => string | undefined | Promise<string | undefined>) | undefined;
  headers: Record<string, string>;
  env: Environment;
}

const DEFAULT_TRANSPORTS: ConnectionType[] = ['websocket', 'eventsource', 'http-streaming', 'long-polling', 'callback-polling'];

/** Options a worker can be given: plain data only. */
const PORTABLE = ['transports', 'timeout', 'lineTimeout', 'openTimeout', 'streamTimeout', 'transportRetry', 'minReconnectDelay', 'maxReconnectDelay', 'maxQueued', 'token', 'headers'] as const;

type Check = [accepts: (value: unknown) => boolean, takes: string];
// Below 2³¹: setTimeout runs a longer delay at once (every request would time out).
const NUMBER: Check = [(v) => typeof v === 'number' && v >= 0 && v < 2 ** 31, 'a number ≥ 0'];
const BOOLEAN: Check = [(v) => typeof v === 'boolean', 'true or false'];
const FUNCTION: Check = [(v) => typeof v === 'function', 'a function'];

/** What each option takes. */
const CHECKS: Record<keyof ClientOptions, Check> = {
  transports: [(v) => Array.isArray(v) && v.length > 0 && v.every(isConnectionType), 'a non-empty list of connection types'],
  timeout: NUMBER,
  lineTimeout: NUMBER,
  openTimeout: NUMBER,
  streamTimeout: NUMBER,
  transportRetry: NUMBER,
  minReconnectDelay: NUMBER,
  maxReconnectDelay: NUMBER,
  maxQueued: NUMBER,
  token: [(v) => typeof v === 'string' || typeof v === 'function', 'a string or a function'],
  headers: [(v) => typeof v === 'object' && v !== null, 'an object'],
  shared: BOOLEAN,
  worker: [(v) => typeof v === 'string' || v === false, 'a script URL or false'],
  autoConnect: BOOLEAN,
  WebSocket: FUNCTION,
  fetch: FUNCTION,
  EventSource: FUNCTION,
};

/** Refuses an unknown option (naming the known ones) or a value of the wrong kind, as the server does. */
function checkOptions(options: ClientOptions): void {
  for (const [name, value] of Object.entries(options)) {
    const check = CHECKS[name as keyof ClientOptions];
    if (!check) throw new TypeError(`unknown option "${name}"; known options are: ${Object.keys(CHECKS).join(', ')}`);
    if (value !== undefined && !check[0](value)) {
      throw new TypeError(`option "${name}" must be ${check[1]}, got ${typeof value === 'function' ? 'a function' : typeof value === 'number' ? value : JSON.stringify(value)}`);
    }
  }
}

interface Resolved {
  url: string;
  resolved: ResolvedOptions;
  /** The SharedWorker to use for tab sharing, if one can be. */
  worker: { script: string; config: HubConfig } | null;
}

export function resolveOptions(url: string, options: ClientOptions): Resolved {
  const g = globalThis as unknown as Record<string, unknown>;
  const doc = g.document as Document | undefined;
  // Relative URLs ("/bayeux") are resolved against the page, as a script tag's user expects.
  const absolute = doc ? new URL(url, doc.baseURI).href : url;
  const env: Environment = {
    fetch: options.fetch ?? (typeof g.fetch === 'function' ? (g.fetch as typeof fetch).bind(globalThis) : undefined),
    WebSocket: options.WebSocket ?? (g.WebSocket as Environment['WebSocket']),
    EventSource: options.EventSource ?? (g.EventSource as Environment['EventSource']),
    document: doc,
  };
  const pageOrigin = (g.location as Location | undefined)?.origin;
  const sameOrigin = pageOrigin !== undefined && new URL(absolute).origin === pageOrigin;
  checkOptions(options);
  const transports = options.transports ?? DEFAULT_TRANSPORTS;
  const resolved: ResolvedOptions = {
    transports,
    timeout: options.timeout ?? 10_000,
    lineTimeout: options.lineTimeout ?? options.timeout ?? 10_000,
    openTimeout: options.openTimeout ?? 5000,
    streamTimeout: options.streamTimeout ?? 5000,
    transportRetry: options.transportRetry ?? 60_000,
    minReconnectDelay: options.minReconnectDelay ?? 500,
    maxReconnectDelay: options.maxReconnectDelay ?? 20_000,
    maxQueued: options.maxQueued ?? 100,
    callbackPolling: (doc !== undefined && !sameOrigin) || options.transports !== undefined,
    token: options.token,
    headers: options.headers ?? {},
    env,
  };
  const portable = typeof options.token !== 'function' && !options.WebSocket && !options.fetch && !options.EventSource;
  let worker: Resolved['worker'] = null;
  if (options.worker !== false && portable && typeof g.SharedWorker === 'function' && (sameOrigin || options.worker !== undefined)) {
    const config: Record<string, unknown> = {};
    for (const key of PORTABLE) if (options[key] !== undefined) config[key] = options[key];
    // A SharedWorker's script must share the page's origin: by default the server's own build.
    const script = options.worker ?? `${absolute.split('?')[0]!.replace(/\/$/, '')}/client.js`;
    worker = { script, config: { url: absolute, options: config } };
  }
  return { url: absolute, resolved, worker };
}
