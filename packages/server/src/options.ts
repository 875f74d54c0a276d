/**
 * Server options: every limit has a default and a knob. `resolveOptions` rejects unknown names
 * and wrong types with a message naming the option and what it accepts.
 */
import { CONNECTION_TYPES, type ConnectionType } from '@perihelion/protocol';
import type { Engine } from './engine/engine.js';
import type { Extension } from './extensions/pipeline.js';
import { PerihelionError } from './errors.js';
import type { Authenticator } from './security/authenticate.js';
import type { ChannelRule } from './security/channel-rules.js';
import type { JwtOptions } from './security/jwt.js';
import type { AuthorizeHook } from './security/policy.js';
import { COOKIE_SAME_SITE, type CookieSameSite } from './security/browser-cookie.js';
import { SESSION_BINDINGS, type SessionBinding } from './security/session-binding.js';
import { validateCallouts, type CalloutRule } from './callouts/allow.js';
import { validateWebhooks, type Webhook } from './callouts/webhooks.js';
import { validateHistoryRules, type HistoryRule } from './engine/retention.js';

export type QueueOverflow = 'drop-oldest' | 'disconnect';

export interface ServerOptions {
  /** Mount path of the Bayeux endpoint. Default: "/bayeux". */
  path?: string;
  /** Longest a /meta/connect is held, in ms (advice.timeout). Default: 30000. */
  timeout?: number;
  /** Pause the client makes between connects, in ms (advice.interval). Default: 0. */
  interval?: number;
  /** A session with no connect for interval + maxInterval ms is expired. Default: 10000. */
  maxInterval?: number;
  /** Most messages waiting for one session (see `queueOverflow`). Default: 1000. */
  maxQueue?: number;
  /**
   * What happens when a session's queue is full (a slow consumer): "drop-oldest" drops its oldest
   * message (a Perihelion client sees the gap in positions and recovers it from history);
   * "disconnect" ends the session with advice to handshake again (and recover). Both are counted.
   * Default: "drop-oldest".
   */
  queueOverflow?: QueueOverflow;
  /** Messages kept per broadcast channel for recovery; 0 turns history and positions off. Default: 1000. */
  historySize?: number;
  /** Longest a message is kept in history, in ms. Default: 600000 (10 minutes). */
  historyTtl?: number;
  /** Retention per channel pattern, first match wins, e.g. [{ channel: "/chat/**", size: 5000 }]. Default: []. */
  history?: HistoryRule[];
  /** Most channels whose history is kept; the least recently published is forgotten first. Default: 100000. */
  maxHistoryChannels?: number;
  /**
   * Most memory all channel histories together may hold, in bytes (counted as characters of the
   * serialised messages); beyond it the oldest messages of the least recently published channels
   * are dropped. Default: 134217728 (128 MiB).
   */
  maxHistoryBytes?: number;
  /** Most messages replayed for the recoveries of one subscribe; beyond it recovery fails. Default: 10000. */
  maxReplay?: number;
  /** Publish ids remembered per session so that a resent publish reaches subscribers once; 0 turns it off. Default: 128. */
  publishDedup?: number;
  /** Answer the CometD ack extension (at-least-once for long-polling and WebSocket). Default: true. */
  ack?: boolean;
  /** Largest HTTP request body or WebSocket frame, in bytes. Default: 1048576 (1 MiB). */
  maxRequestBytes?: number;
  /** Most messages in one request or frame. Default: 100. */
  maxBatch?: number;
  /** Deepest JSON nesting of one message. Default: 32. */
  maxDepth?: number;
  /** Most channels and patterns one session may subscribe to. Default: 1000. */
  maxSubscriptions?: number;
  /** Longest channel name, in characters. Default: 1024. */
  maxChannelLength?: number;
  /** Connection types offered in the handshake. Default: websocket, long-polling, cross-origin-long-polling. */
  transports?: ConnectionType[];
  /**
   * Origins allowed for WebSocket upgrades and cross-origin HTTP (CORS). Requests without an Origin
   * header and same-origin requests are always allowed. "*" allows any origin. Default: [].
   */
  allowedOrigins?: string[];
  /** WebSocket ping interval in ms, so idle lines survive proxies and dead peers are found; 0 disables. Default: 25000. */
  pingInterval?: number;
  /**
   * Serve callback-polling (JSONP). Off by default: a JSONP response is a script any page can load
   * with the user's cookies, so it bypasses the same-origin policy. Default: false.
   */
  jsonp?: boolean;
  /** Idle time after which an SSE or HTTP stream gets a no-op (comment / empty array), in ms. Default: 15000. */
  heartbeat?: number;
  /** Bytes of padding written when a stream opens, for intermediaries that buffer the first bytes. Default: 0. */
  streamPadding?: number;
  /** A push line with more than this many bytes not yet written to the network is congested: messages wait in the session's bounded queue. Default: 1048576. */
  maxBufferedBytes?: number;
  /**
   * Development and compatibility mode: any client may subscribe and publish anywhere (meta
   * channels excepted). Never in production. Default: false.
   */
  open?: boolean;
  /** Whether a handshake without credentials gets an (anonymous) session. Default: true. */
  anonymous?: boolean;
  /** Authenticates handshakes (see security/authenticate.ts). Default: the JWT authenticator when `jwt` is set, else none. */
  authenticate?: Authenticator;
  /** Keys for signed tokens: handshake tokens (`ext.token`) and subscription tokens. */
  jwt?: JwtOptions;
  /** Authorization rules by channel pattern (see security/channel-rules.ts). Default: []. */
  channels?: ChannelRule[];
  /** Programmatic authorization, asked before the rules. */
  authorize?: AuthorizeHook;
  /**
   * Which requests may speak for a session (see security/session-binding.ts and docs/security.md).
   * "cookie": once the client has presented its BAYEUX_BROWSER cookie, only that browser (or the
   * session's push line); a client that keeps no cookies is identified by its clientId.
   * "strict": only the browser or push line the session was handshaken from, from the first request.
   * "none": the clientId alone, and no cookie is issued. Default: "cookie".
   */
  sessionBinding?: SessionBinding;
  /**
   * The SameSite attribute of the BAYEUX_BROWSER cookie: "omit" leaves it out (browsers then treat
   * the cookie as Lax, and old cookie parsers such as Ruby's cookiejar, used by the Ruby Faye
   * client, do not fail on it); "lax", "strict"; "none" (sent with Secure, so only over HTTPS: it
   * lets cross-site pages keep a bound session in browsers that still send third-party cookies).
   * The cookie carries Secure whenever the request came over HTTPS. Default: "omit".
   */
  cookieSameSite?: CookieSameSite;
  /** Largest published message once serialised, in bytes. Default: 524288 (512 KiB). */
  maxMessageBytes?: number;
  /** Most live sessions per remote address; 0 for no limit. Default: 1000. */
  maxSessionsPerIp?: number;
  /** Publishes per second one session may make (token bucket); 0 for no limit. Default: 500. */
  publishRate?: number;
  /** Publishes a session may make in a burst. Default: 1000. */
  publishBurst?: number;
  /** Handshakes per second from one remote address; 0 for no limit. Default: 50. */
  handshakeRate?: number;
  /** Handshakes one remote address may make in a burst. Default: 200. */
  handshakeBurst?: number;
  /** Longest pause while a request body arrives, in ms, before the request is refused (slow-drip defence). Default: 10000. */
  bodyTimeout?: number;
  /** Bearer key of the HTTP API for backends (/api/*); the API is off without it. At least 16 characters. */
  apiKey?: string;
  /** On shutdown, how long sessions get to collect messages still waiting for them, in ms. Default: 5000. */
  drainTimeout?: number;
  /** Serve /health, /ready and /metrics. Default: true. */
  operations?: boolean;
  /** Where subscriptions live and how publishes fan out. Default: a new MemoryEngine. */
  engine?: Engine;
  /** Extensions added at start, in order. */
  extensions?: Extension[];
  /** Ask the application over HTTP before a handshake, subscribe or publish (see callouts/allow.ts). */
  callouts?: CalloutRule[];
  /** Tell the application over HTTP about handshakes, subscribes, unsubscribes and disconnects (see callouts/webhooks.ts). */
  webhooks?: Webhook[];
}

export interface ResolvedOptions {
  path: string;
  timeout: number;
  interval: number;
  maxInterval: number;
  maxQueue: number;
  queueOverflow: QueueOverflow;
  historySize: number;
  historyTtl: number;
  history: HistoryRule[];
  maxHistoryChannels: number;
  maxHistoryBytes: number;
  maxReplay: number;
  publishDedup: number;
  ack: boolean;
  maxRequestBytes: number;
  maxBatch: number;
  maxDepth: number;
  maxSubscriptions: number;
  maxChannelLength: number;
  transports: ConnectionType[];
  allowedOrigins: string[];
  pingInterval: number;
  jsonp: boolean;
  heartbeat: number;
  streamPadding: number;
  maxBufferedBytes: number;
  open: boolean;
  anonymous: boolean;
  sessionBinding: SessionBinding;
  cookieSameSite: CookieSameSite;
  maxMessageBytes: number;
  maxSessionsPerIp: number;
  publishRate: number;
  publishBurst: number;
  handshakeRate: number;
  handshakeBurst: number;
  bodyTimeout: number;
  drainTimeout: number;
  apiKey: string | undefined;
  operations: boolean;
}

export const DEFAULTS: ResolvedOptions = {
  path: '/bayeux',
  timeout: 30_000,
  interval: 0,
  maxInterval: 10_000,
  maxQueue: 1000,
  queueOverflow: 'drop-oldest',
  historySize: 1000,
  historyTtl: 600_000,
  history: [],
  maxHistoryChannels: 100_000,
  maxHistoryBytes: 128 * 1024 * 1024,
  maxReplay: 10_000,
  publishDedup: 128,
  ack: true,
  maxRequestBytes: 1024 * 1024,
  maxBatch: 100,
  maxDepth: 32,
  maxSubscriptions: 1000,
  maxChannelLength: 1024,
  transports: ['websocket', 'long-polling', 'cross-origin-long-polling', 'eventsource', 'http-streaming'],
  allowedOrigins: [],
  pingInterval: 25_000,
  jsonp: false,
  heartbeat: 15_000,
  streamPadding: 0,
  maxBufferedBytes: 1024 * 1024,
  open: false,
  anonymous: true,
  sessionBinding: 'cookie',
  cookieSameSite: 'omit',
  maxMessageBytes: 512 * 1024,
  maxSessionsPerIp: 1000,
  publishRate: 500,
  publishBurst: 1000,
  handshakeRate: 50,
  handshakeBurst: 200,
  bodyTimeout: 10_000,
  drainTimeout: 5000,
  apiKey: undefined,
  operations: true,
};


const INTEGER_LIMITS: Record<string, [min: number, max: number]> = {
  timeout: [0, 600_000],
  interval: [0, 600_000],
  maxInterval: [1000, 3_600_000],
  maxQueue: [1, 10_000_000],
  historySize: [0, 1_000_000],
  historyTtl: [1000, 30 * 24 * 3600_000],
  maxHistoryChannels: [1, 100_000_000],
  maxHistoryBytes: [1024, 1024 * 1024 * 1024 * 1024],
  maxReplay: [0, 100_000_000],
  publishDedup: [0, 100_000],
  maxRequestBytes: [1024, 1024 * 1024 * 1024],
  maxBatch: [1, 100_000],
  maxDepth: [2, 1000],
  maxSubscriptions: [1, 10_000_000],
  maxChannelLength: [2, 65_536],
  pingInterval: [0, 3_600_000],
  heartbeat: [1000, 3_600_000],
  streamPadding: [0, 65_536],
  maxBufferedBytes: [1024, 1024 * 1024 * 1024],
  maxMessageBytes: [64, 1024 * 1024 * 1024],
  maxSessionsPerIp: [0, 10_000_000],
  publishRate: [0, 10_000_000],
  publishBurst: [1, 10_000_000],
  handshakeRate: [0, 10_000_000],
  handshakeBurst: [1, 10_000_000],
  bodyTimeout: [100, 600_000],
  drainTimeout: [0, 600_000],
};

const KNOWN = new Set([...Object.keys(DEFAULTS), 'engine', 'extensions', 'authenticate', 'jwt', 'channels', 'authorize', 'callouts', 'webhooks']);

/** A value from a fixed list, or an error naming the option and the list. */
function oneOf<T extends string>(key: string, value: unknown, allowed: readonly T[]): T {
  if (!(allowed as readonly unknown[]).includes(value)) {
    invalid(`option "${key}" must be ${allowed.map((a) => `"${a}"`).join(', ')}; got ${JSON.stringify(value)}`);
  }
  return value as T;
}

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

export function resolveOptions(options: ServerOptions = {}): ResolvedOptions {
  if (typeof options !== 'object' || options === null) invalid('options must be an object');
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) invalid(`unknown option "${key}"; known options are: ${[...KNOWN].join(', ')}`);
  }
  const resolved: ResolvedOptions = { ...DEFAULTS };
  for (const [key, [min, max]] of Object.entries(INTEGER_LIMITS)) {
    const value = (options as Record<string, unknown>)[key];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      invalid(`option "${key}" must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    (resolved as unknown as Record<string, number>)[key] = value;
  }
  if (options.path !== undefined) {
    if (typeof options.path !== 'string' || !/^\/[A-Za-z0-9._~\-/]*$/.test(options.path) || options.path.includes('//')) {
      invalid(`option "path" must be a URL path starting with "/", like "/bayeux" or "/cometd", got ${JSON.stringify(options.path)}`);
    }
    resolved.path = options.path.length > 1 ? options.path.replace(/\/$/, '') : options.path;
  }
  if (options.transports !== undefined) {
    if (!Array.isArray(options.transports) || options.transports.length === 0) {
      invalid('option "transports" must be a non-empty list of connection types');
    }
    for (const type of options.transports) {
      if (!(CONNECTION_TYPES as readonly string[]).includes(type)) {
        invalid(`option "transports": unknown connection type ${JSON.stringify(type)}; known types are: ${CONNECTION_TYPES.join(', ')}`);
      }
    }
    resolved.transports = [...new Set(options.transports)];
  }
  if (options.apiKey !== undefined) {
    if (typeof options.apiKey !== 'string' || options.apiKey.length < 16) invalid('option "apiKey" must be a string of at least 16 characters');
    resolved.apiKey = options.apiKey;
  }
  for (const key of ['jsonp', 'open', 'anonymous', 'operations', 'ack'] as const) {
    const value = options[key];
    if (value === undefined) continue;
    if (typeof value !== 'boolean') invalid(`option "${key}" must be true or false, got ${JSON.stringify(value)}`);
    resolved[key] = value;
  }
  if (options.sessionBinding !== undefined) {
    resolved.sessionBinding = oneOf('sessionBinding', options.sessionBinding, SESSION_BINDINGS);
  }
  if (options.cookieSameSite !== undefined) {
    resolved.cookieSameSite = oneOf('cookieSameSite', options.cookieSameSite, COOKIE_SAME_SITE);
  }
  for (const key of ['authenticate', 'authorize'] as const) {
    if (options[key] !== undefined && typeof options[key] !== 'function') invalid(`option "${key}" must be a function`);
  }
  if (options.jwt !== undefined && (typeof options.jwt !== 'object' || options.jwt === null)) {
    invalid('option "jwt" must be an object like { secret } or { publicKey, algorithm } or { jwks }');
  }
  if (resolved.jsonp && !resolved.transports.includes('callback-polling')) {
    resolved.transports = [...resolved.transports, 'callback-polling'];
  } else if (!resolved.jsonp && resolved.transports.includes('callback-polling')) {
    invalid('option "transports" lists callback-polling, which needs "jsonp: true" (--jsonp): JSONP bypasses the same-origin policy, so it is off unless enabled');
  }
  if (options.allowedOrigins !== undefined) {
    if (!Array.isArray(options.allowedOrigins) || !options.allowedOrigins.every((o) => typeof o === 'string')) {
      invalid('option "allowedOrigins" must be a list of origins like "https://example.com", or ["*"]');
    }
    for (const origin of options.allowedOrigins) {
      if (origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin)) {
        invalid(`option "allowedOrigins": ${JSON.stringify(origin)} is not an origin; write scheme://host[:port] without a path, or "*"`);
      }
    }
    resolved.allowedOrigins = [...options.allowedOrigins];
  }
  if (options.queueOverflow !== undefined) {
    if (options.queueOverflow !== 'drop-oldest' && options.queueOverflow !== 'disconnect') {
      invalid(`option "queueOverflow" must be "drop-oldest" or "disconnect", got ${JSON.stringify(options.queueOverflow)}`);
    }
    resolved.queueOverflow = options.queueOverflow;
  }
  validateHistoryRules(options.history);
  if (options.history) resolved.history = options.history.map((rule) => ({ ...rule }));
  validateCallouts(options.callouts);
  validateWebhooks(options.webhooks);
  return resolved;
}
