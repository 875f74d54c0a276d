/**
 * Every server option, defined once: its kind, default, range or choices, and help. From this
 * table come the option types (`ResolvedOptions`), the defaults, the validation
 * (`resolveOptions`), the flags and environment variables of `perihelion serve`, and the README's
 * table of options (a test keeps it equal to what this table says).
 *
 * How an option is set outside code (`set`):
 * - `flag` (the default): `--kebab-name` and `PERIHELION_SNAKE_NAME`;
 * - `env`: only `PERIHELION_SNAKE_NAME`, for secrets that must not show in `ps`;
 * - `file`: only in a configuration file (structured values);
 * - `code`: only in `createServer(options)`;
 * - `{ readme }`: the CLI sets it its own way, which the README names.
 */
import { CONNECTION_TYPES, isConnectionType, type ConnectionType } from '@perihelion/protocol';
import { proxyEntryProblem } from './http/client-address.js';

export type OptionSetting = 'flag' | 'env' | 'file' | 'code' | { readme: string };

interface Described {
  /** One line, for `--help` and the README. */
  help: string;
  set?: OptionSetting;
}

export interface IntegerOption extends Described {
  kind: 'integer';
  default: number;
  min: number;
  max: number;
}
export interface BooleanOption extends Described {
  kind: 'boolean';
  default: boolean;
}
export interface ChoiceOption extends Described {
  kind: 'choice';
  values: readonly string[];
  default: string;
}
/** A URL path like "/bayeux". */
export interface PathOption extends Described {
  kind: 'path';
  /** '' (with `shown`): unset, another value stands for it. */
  default: string;
  /** The default, as the README shows it, when it is unset. */
  shown?: string;
}
/** A list of Bayeux connection types. */
export interface ConnectionTypesOption extends Described {
  kind: 'connection-types';
  default: readonly ConnectionType[];
}
/** A list of web origins, or "*". */
export interface OriginsOption extends Described {
  kind: 'origins';
  default: readonly string[];
}
/** A list of IP addresses, ranges (CIDR) and names of ranges (see http/client-address.ts). */
export interface AddressesOption extends Described {
  kind: 'addresses';
  default: readonly string[];
}
/** A secret string with a least length; unset by default. */
export interface SecretOption extends Described {
  kind: 'secret';
  minLength: number;
}
/**
 * A value with a shape of its own (rules, hooks, an engine), checked by the module that uses it;
 * its type is written in `ServerOptions`.
 */
export interface StructuredOption extends Described {
  kind: 'structured';
  /** The default, as the README shows it. */
  shown: string;
}

export type OptionSpec = IntegerOption | BooleanOption | ChoiceOption | PathOption | ConnectionTypesOption | OriginsOption | AddressesOption | SecretOption | StructuredOption;

export const OPTION_TABLE = {
  path: { kind: 'path', default: '/bayeux', help: 'mount path of the Bayeux endpoint (`/cometd`, the CometD clients\' usual one, is a valid choice)' },
  timeout: { kind: 'integer', default: 30_000, min: 0, max: 600_000, help: 'longest hold of a `/meta/connect`, ms (`advice.timeout`)' },
  interval: { kind: 'integer', default: 0, min: 0, max: 600_000, help: 'pause between connects advised to clients, ms (`advice.interval`)' },
  maxInterval: { kind: 'integer', default: 10_000, min: 1000, max: 3_600_000, help: 'a session with no connect for `interval + maxInterval` ms is swept' },
  maxQueue: { kind: 'integer', default: 1000, min: 1, max: 10_000_000, help: 'messages waiting per session; what happens when it is full is `queueOverflow`' },
  queueOverflow: {
    kind: 'choice',
    values: ['drop-oldest', 'disconnect'],
    default: 'drop-oldest',
    help: 'a slow consumer\'s full queue: `drop-oldest` drops its oldest message (`stats().queueDrops`; the Perihelion client recovers the gap), `disconnect` ends the session with advice to handshake (`stats().slowConsumers`)',
  },
  historySize: { kind: 'integer', default: 1000, min: 0, max: 1_000_000, help: 'messages kept per broadcast channel for recovery; 0 turns history and positions off' },
  historyTtl: { kind: 'integer', default: 600_000, min: 1000, max: 30 * 24 * 3600_000, help: 'longest a message is kept in history, ms' },
  history: {
    kind: 'structured',
    set: 'file',
    shown: '`[]`',
    help: 'retention per channel pattern, first match wins: `[{channel: "/ticks/**", size: 0}, {channel: "/chat/*", size: 5000, ttl: 3600000}]`',
  },
  maxHistoryChannels: { kind: 'integer', default: 100_000, min: 1, max: 100_000_000, help: 'channels whose history is kept; the least recently published is forgotten, presence channels first (its clients\' recovery then reports `false`); as many positions of channels without messages yet are kept apart' },
  maxHistoryBytes: {
    kind: 'integer',
    default: 128 * 1024 * 1024,
    min: 1024,
    max: 1024 * 1024 * 1024 * 1024,
    help: 'memory all histories together may hold (counted as characters of the serialised messages); beyond it the oldest messages of the least recently published channels go (memory engine; with `--redis`, Redis\'s `maxmemory` bounds history, see Cluster mode)',
  },
  maxReplay: { kind: 'integer', default: 10_000, min: 0, max: 100_000_000, help: 'most messages replayed for the recoveries of one subscribe' },
  maxRelayedStateRequests: { kind: 'integer', default: 10_000, min: 1, max: 10_000_000, help: "state-channel requests of this node's clients waiting at once for the node of a cluster that holds the channel; past it they are answered 503 (docs/state.md)" },
  publishDedup: { kind: 'integer', default: 128, min: 0, max: 100_000, help: 'publish ids remembered per session (per client across its sessions, when its handshake names it, and across the nodes of a cluster), so that a resent publish reaches subscribers once (0: off)' },
  idempotencyWindow: {
    kind: 'integer',
    default: 600_000,
    min: 1000,
    max: 7 * 24 * 3600_000,
    help: 'how long an idempotency key (`Idempotency-Key` of `POST /api/publish`, `idempotencyKey` of `server.publish`, a client publish\'s `ext.idempotencyKey`) is remembered, on every node: a publish repeated with it meanwhile publishes nothing, ms',
  },
  idempotencyKeys: {
    kind: 'integer',
    default: 100_000,
    min: 1,
    max: 10_000_000,
    help: 'idempotency keys remembered at most (the latest; with `--redis`, per partition: about 100 bytes and the key\'s length each in Redis, 13 MB for 100 000 UUIDs); a backend that publishes faster than this many per `idempotencyWindow` has its keys remembered for less',
  },
  ack: { kind: 'boolean', default: true, help: 'answer the CometD ack extension (no loss, no duplicate within a session)' },
  maxRequestBytes: { kind: 'integer', default: 1024 * 1024, min: 1024, max: 1024 * 1024 * 1024, help: 'largest HTTP body or WebSocket frame (HTTP 413 / WebSocket close 1009)' },
  compressAbove: { kind: 'integer', default: 16 * 1024, min: 0, max: 1024 * 1024 * 1024, help: 'long-polling answers larger than this many bytes are gzip-compressed for clients that accept it (a state snapshot, a recovery replay); 0: never' },
  maxBatch: { kind: 'integer', default: 100, min: 1, max: 100_000, help: 'most messages in one request or frame' },
  maxDepth: { kind: 'integer', default: 32, min: 2, max: 1000, help: 'deepest JSON nesting of a message, checked before parsing' },
  maxSubscriptions: { kind: 'integer', default: 1000, min: 1, max: 10_000_000, help: 'channels and patterns per session' },
  maxChannelLength: { kind: 'integer', default: 1024, min: 2, max: 65_536, help: 'longest channel name' },
  pingInterval: { kind: 'integer', default: 25_000, min: 0, max: 3_600_000, help: 'WebSocket ping interval, ms (0: off); a socket that misses a ping is closed' },
  transports: {
    kind: 'connection-types',
    default: ['websocket', 'long-polling', 'cross-origin-long-polling', 'eventsource', 'http-streaming'],
    help: 'connection types offered in the handshake',
  },
  jsonp: { kind: 'boolean', default: false, help: 'also offer `callback-polling` (JSONP) to every page; it bypasses the same-origin policy, so only for public data (without it, pages of the `allowedOrigins` still get it, told by their Referer: Faye handshakes over JSONP across origins)' },
  heartbeat: { kind: 'integer', default: 15_000, min: 1000, max: 3_600_000, help: 'longest an SSE or HTTP stream stays silent: an idle one gets a no-op (clients take a longer silence for a dead line), ms' },
  streamPadding: { kind: 'integer', default: 0, min: 0, max: 65_536, help: 'bytes of padding at the start of a stream, for proxies that buffer the first bytes' },
  maxBufferedBytes: { kind: 'integer', default: 1024 * 1024, min: 1024, max: 1024 * 1024 * 1024, help: 'unsent bytes after which a push line is congested (messages then wait in the session\'s bounded queue; below 16384, the socket\'s own buffer, that mark counts instead)' },
  maxPendingFrames: {
    kind: 'integer',
    default: 32,
    min: 1,
    max: 100_000,
    help: 'WebSocket frames of one connection received and waiting for the ones before them (an asynchronous engine or extension); past it, or past `maxRequestBytes` of them, the socket is not read until they are handled (TCP backpressure)',
  },
  allowedOrigins: {
    kind: 'origins',
    default: [],
    help: 'origins allowed for cross-origin HTTP (CORS), WebSocket and, from their pages (by Referer), JSONP, comma-separated; same-origin and non-browser clients are always allowed; `*` allows all',
  },
  trustProxy: {
    kind: 'addresses',
    default: [],
    help: 'reverse proxies whose `X-Forwarded-For` (or `Forwarded`, or `X-Real-IP`) names the client, comma-separated: addresses, ranges (`10.0.0.0/8`), `loopback`, `private`; the per-address limits, logs and call-outs then see each client\'s own address (see docs/security.md)',
  },
  open: { kind: 'boolean', default: false, help: 'OPEN MODE, for development only: any client may publish and subscribe anywhere' },
  anonymous: { kind: 'boolean', default: true, help: 'give a session to handshakes without credentials (anonymous)' },
  jwt: { kind: 'structured', set: { readme: '`PERIHELION_JWT_SECRET`, `--jwt-public-key`, `--jwks`' }, shown: 'none', help: 'keys for handshake and subscription tokens' },
  channels: { kind: 'structured', set: { readme: '`--rules <file>`' }, shown: '`[]`', help: 'authorization rules (see Security)' },
  authenticate: { kind: 'structured', set: 'code', shown: 'none', help: 'custom authentication of handshakes (see Security)' },
  authorize: { kind: 'structured', set: 'code', shown: 'none', help: 'custom authorization, asked before the rules (see Security)' },
  sessionBinding: {
    kind: 'choice',
    values: ['cookie', 'strict', 'none'],
    default: 'cookie',
    help: '`cookie`: a session binds to its browser once the client presents its `BAYEUX_BROWSER` cookie, and clients that keep no cookies are identified by their clientId; `strict`: only the browser or WebSocket it was handshaken from; `none`: the clientId suffices (see docs/security.md)',
  },
  cookieSameSite: {
    kind: 'choice',
    values: ['omit', 'lax', 'strict', 'none'],
    default: 'omit',
    help: 'SameSite of the `BAYEUX_BROWSER` cookie: `omit` (browsers take it as Lax; old cookie parsers, such as the Ruby Faye client\'s, refuse the attribute), `lax`, `strict`, `none` (with `Secure`)',
  },
  cookiePath: {
    kind: 'path',
    default: '',
    shown: 'the mount path',
    help: 'Path of the `BAYEUX_BROWSER` cookie: behind a proxy that serves the endpoint under another path (`/realtime/bayeux` outside, `/bayeux` here) give the outside one, or `/`, else browsers never send the cookie back (sessions are then bound by their clientId alone, and refused under `sessionBinding: strict`)',
  },
  cookieReuseWindow: {
    kind: 'integer',
    default: 5000,
    min: 0,
    max: 60_000,
    help: 'length of the time windows in which an address\'s cookie-less requests are given one `BAYEUX_BROWSER` cookie, the same on every node of a cluster (and cookies of adjacent windows are taken for one browser\'s), so that clients sharing a cookie jar that handshake together (CometD in Node, tabs on a first visit) are not refused (402) later; the same address\'s other parties share it (0: a new random cookie each time)',
  },
  maxMessageBytes: { kind: 'integer', default: 512 * 1024, min: 64, max: 1024 * 1024 * 1024, help: 'largest published message, serialised: a client\'s, or one sent to `/api/publish` or `/api/deliver` (413 `too_large`)' },
  maxSessions: { kind: 'integer', default: 100_000, min: 0, max: 100_000_000, help: 'sessions on this node; past it new handshakes are refused (503, retry later) and /ready answers 503 (0: no limit)' },
  maxMemory: { kind: 'integer', default: 0, min: 0, max: 16 * 1024 * 1024, help: 'resident memory watermark, MB; past it new handshakes and client publishes are refused (503) and /ready answers 503 (0: the V8 heap limit)' },
  maxSubscriptionsPerIp: { kind: 'integer', default: 20_000, min: 0, max: 100_000_000, help: 'subscriptions held by all the sessions of one address (bounds one address to about 20 MB; 0: no limit)' },
  maxSessionsPerIp: { kind: 'integer', default: 1000, min: 0, max: 10_000_000, help: 'live sessions per remote address (0: no limit)' },
  maxSessionsPerBrowser: {
    kind: 'integer',
    default: 4,
    min: 0,
    max: 1000,
    help: 'lines one browser (its `BAYEUX_BROWSER` cookie) may hold open at once on this node across its tabs, held long-polls and SSE or HTTP streams; past it a poll is answered at once with the `multiple-clients` advice and comes back after `multiSessionInterval`, and a stream is refused (429, the client long-polls), so the tabs never take all six HTTP/1.1 connections a browser keeps to one host (0: no limit; behind a proxy that speaks HTTP/2 to browsers, which has no such limit, 0 or more)',
  },
  multiSessionInterval: { kind: 'integer', default: 2000, min: 0, max: 600_000, help: 'how soon a browser\'s poll past `maxSessionsPerBrowser` is told to come back, ms' },
  maxWebsocketsPerIp: { kind: 'integer', default: 1000, min: 0, max: 10_000_000, help: 'open WebSockets per remote address on this node; past it an upgrade is refused with 429 (0: no limit)' },
  publishRate: { kind: 'integer', default: 500, min: 0, max: 10_000_000, help: 'publishes per second per session (0: no limit)' },
  publishBurst: { kind: 'integer', default: 1000, min: 1, max: 10_000_000, help: 'publishes a session may make in a burst' },
  subscribeRate: { kind: 'integer', default: 100, min: 0, max: 10_000_000, help: 'channels a session may subscribe to or unsubscribe from per second (each new one costs the engine\'s work and a presence event; naming one again costs nothing; 0: no limit)' },
  subscribeBurst: { kind: 'integer', default: 1000, min: 1, max: 10_000_000, help: 'channels a session may subscribe to or unsubscribe from in a burst (the default lets a client subscribe to `maxSubscriptions` channels at once; a larger list costs the whole burst)' },
  handshakeRate: { kind: 'integer', default: 50, min: 0, max: 10_000_000, help: 'handshakes per second per remote address (0: no limit)' },
  handshakeBurst: { kind: 'integer', default: 200, min: 1, max: 10_000_000, help: 'handshakes one remote address may make in a burst' },
  bodyTimeout: { kind: 'integer', default: 10_000, min: 100, max: 600_000, help: 'longest pause in a request body, ms (slow-drip defence); the whole body gets six times that' },
  keepAliveTimeout: {
    kind: 'integer',
    default: 5000,
    min: 1000,
    max: 3_600_000,
    help: 'how long an idle HTTP connection of the server\'s own listener is kept for the next request, ms; behind a balancer that reuses its connections to the server, make it longer than the balancer\'s idle timeout (AWS ALB: 60 s, so 65000), or it may send a request on a connection the server is closing and answer the client 502',
  },
  drainTimeout: { kind: 'integer', default: 5000, min: 0, max: 600_000, help: 'on shutdown, how long sessions get to collect waiting messages, ms' },
  apiKey: { kind: 'secret', minLength: 16, set: 'env', help: 'bearer key of the HTTP API (at least 16 characters); the API is off without it' },
  operations: { kind: 'boolean', default: true, set: 'code', help: 'serve `/health`, `/ready`, `/metrics`' },
  callouts: {
    kind: 'structured',
    set: 'file',
    shown: 'none',
    help: 'ask the application\'s HTTP endpoint before handshake/subscribe/publish (allow, deny, rewrite; timeout and failure policy), see docs/security.md',
  },
  webhooks: { kind: 'structured', set: 'file', shown: 'none', help: 'POST session events (handshake, subscribe, unsubscribe, disconnect) to the application, bounded backlog' },
  presence: { kind: 'boolean', default: true, help: 'presence: join and leave events on `/presence<channel>` for the members of each broadcast channel (sessions subscribed to it exactly), and the `/service/presence` request that lists them (see docs/protocol.md)' },
  presenceBy: {
    kind: 'choice',
    values: ['user', 'session'],
    default: 'user',
    help: 'who a member is: `user` (all the sessions of an authenticated user are one member, which joins with its first session and leaves with its last; an anonymous session is a member of its own) or `session`',
  },
  presenceGrace: { kind: 'integer', default: 5000, min: 0, max: 3_600_000, help: 'a leave is published only if the member has not come back (a page reload, another node) within this many ms; 0: at once' },
  engine: {
    kind: 'structured',
    set: { readme: '`--redis <url>` / `PERIHELION_REDIS` / `redis` in a configuration file' },
    shown: '`MemoryEngine`',
    help: 'where subscriptions, history and presence live and how publishes fan out; `--redis` switches to `RedisEngine` (see Cluster mode)',
  },
  extensions: { kind: 'structured', set: 'code', shown: '`[]`', help: 'extensions added at start' },
} as const satisfies Record<string, OptionSpec>;

export type OptionName = keyof typeof OPTION_TABLE;

/** The value type an option's kind holds (structured options are typed in ServerOptions). */
type ValueOf<S> = S extends { kind: 'integer' }
  ? number
  : S extends { kind: 'boolean' }
    ? boolean
    : S extends { kind: 'choice'; values: readonly (infer V)[] }
      ? V
      : S extends { kind: 'path' }
        ? string
        : S extends { kind: 'connection-types' }
          ? ConnectionType[]
          : S extends { kind: 'origins' | 'addresses' }
            ? string[]
            : S extends { kind: 'secret' }
              ? string | undefined
              : never;

type Table = typeof OPTION_TABLE;
type ScalarName = { [K in OptionName]: Table[K] extends { kind: 'structured' } ? never : K }[OptionName];

/** The options that take one value of a kind above, resolved. */
export type ScalarOptions = { -readonly [K in ScalarName]: ValueOf<Table[K]> };

/** The value of each option that has one when none is given. */
export function tableDefaults(): ScalarOptions {
  const defaults: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(OPTION_TABLE) as [string, OptionSpec][]) {
    if (spec.kind === 'structured') continue;
    if (spec.kind === 'secret') defaults[name] = undefined;
    else defaults[name] = Array.isArray(spec.default) ? [...(spec.default as readonly unknown[])] : spec.default;
  }
  return defaults as ScalarOptions;
}

/**
 * Checks one value against its option's spec: the value to use, or the reason it is refused
 * (a sentence naming what the option accepts).
 */
export function checkOption(name: string, spec: OptionSpec, value: unknown): { value: unknown } | { error: string } {
  // Only in error messages, so only for the kinds that print it: a structured value (an engine,
  // hooks) may hold cycles, and JSON.stringify throws on those and on a BigInt.
  const got = (): string => `got ${shown(value)}`;
  switch (spec.kind) {
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < spec.min || value > spec.max) {
        return { error: `option "${name}" must be an integer from ${spec.min} to ${spec.max}, ${got()}` };
      }
      return { value };
    case 'boolean':
      return typeof value === 'boolean' ? { value } : { error: `option "${name}" must be true or false, ${got()}` };
    case 'choice': {
      if (spec.values.includes(value as string)) return { value };
      const quoted = spec.values.map((v) => `"${v}"`);
      return { error: `option "${name}" must be ${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)}, ${got()}` };
    }
    case 'path':
      if (typeof value !== 'string' || !/^\/[A-Za-z0-9._~\-/]*$/.test(value) || value.includes('//')) {
        return { error: `option "${name}" must be a URL path starting with "/", like "/bayeux" or "/cometd", ${got()}` };
      }
      return { value: value.length > 1 ? value.replace(/\/$/, '') : value };
    case 'connection-types': {
      if (!Array.isArray(value) || value.length === 0) return { error: `option "${name}" must be a non-empty list of connection types` };
      const unknown = value.find((type) => !isConnectionType(type));
      if (unknown !== undefined) return { error: `option "${name}": unknown connection type ${shown(unknown)}; known types are: ${CONNECTION_TYPES.join(', ')}` };
      return { value: [...new Set(value)] };
    }
    case 'origins': {
      if (!Array.isArray(value) || !value.every((o) => typeof o === 'string')) {
        return { error: `option "${name}" must be a list of origins like "https://example.com", or ["*"]` };
      }
      const bad = value.find((origin: string) => origin !== '*' && !/^https?:\/\/[^/\s]+$/.test(origin));
      if (bad !== undefined) return { error: `option "${name}": ${JSON.stringify(bad)} is not an origin; write scheme://host[:port] without a path, or "*"` };
      return { value: [...value] };
    }
    case 'addresses': {
      if (!Array.isArray(value) || !value.every((entry) => typeof entry === 'string')) {
        return { error: `option "${name}" must be a list of addresses or ranges like "10.0.0.0/8", ${got()}` };
      }
      for (const entry of value as string[]) {
        const problem = proxyEntryProblem(entry.trim());
        if (problem !== undefined) return { error: `option "${name}": ${problem}` };
      }
      return { value: value.map((entry: string) => entry.trim()) };
    }
    case 'secret':
      return typeof value === 'string' && value.length >= spec.minLength ? { value } : { error: `option "${name}" must be a string of at least ${spec.minLength} characters` };
    case 'structured':
      return { value };
  }
}

/** A refused value as an error message shows it: its JSON, cut short; never a throw. */
function shown(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    text = undefined;
  }
  text ??= typeof value === 'bigint' ? `${value}n` : typeof value === 'object' ? 'an object' : `a ${typeof value}`;
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
