/**
 * Bayeux 1.0 message shapes, as the CometD and Faye clients put them on the wire.
 * Every field but `channel` is optional here; which ones a given meta message needs
 * is checked by `validate.ts`.
 */

/** Values of `advice.reconnect` (Bayeux §advice). */
export type Reconnect = 'retry' | 'handshake' | 'none';

export interface Advice {
  reconnect?: Reconnect;
  /** Milliseconds the client waits after a /meta/connect reply before the next connect. */
  interval?: number;
  /** Milliseconds the server may hold a /meta/connect before answering it. */
  timeout?: number;
  /** Milliseconds a session may stay without a connect before the server expires it (CometD). */
  maxInterval?: number;
  'multiple-clients'?: boolean;
  hosts?: string[];
  [key: string]: unknown;
}

export type Ext = Record<string, unknown>;

/** A message id: the spec says an alphanumeric string; we echo whatever string or number arrives. */
export type MessageId = string | number;

export interface Message {
  channel: string;
  id?: MessageId;
  clientId?: string;
  data?: unknown;
  ext?: Ext;
  advice?: Advice;
  successful?: boolean;
  error?: string;
  version?: string;
  minimumVersion?: string;
  supportedConnectionTypes?: string[];
  connectionType?: string;
  subscription?: string | string[];
  authSuccessful?: boolean;
  [key: string]: unknown;
}

/** The five meta channels of Bayeux 1.0 (§Meta Channels). Anything else under /meta is refused. */
export const META = {
  handshake: '/meta/handshake',
  connect: '/meta/connect',
  subscribe: '/meta/subscribe',
  unsubscribe: '/meta/unsubscribe',
  disconnect: '/meta/disconnect',
} as const;

export type MetaChannel = (typeof META)[keyof typeof META];

const META_CHANNELS: ReadonlySet<string> = new Set(Object.values(META));

/** True for exactly one of the five meta channels: `/meta/subscribe/x` is not `/meta/subscribe` (CVE-2020-11020). */
export function isMetaChannel(channel: string): channel is MetaChannel {
  return META_CHANNELS.has(channel);
}

export const BAYEUX_VERSION = '1.0';

/**
 * Bayeux connection types (the `connectionType` and `supportedConnectionTypes` strings).
 * `cross-origin-long-polling` is Faye's name for long-polling across origins; `eventsource`
 * is Faye's Server-Sent Events type.
 */
export const CONNECTION_TYPES = [
  'websocket',
  'long-polling',
  'cross-origin-long-polling',
  'callback-polling',
  'eventsource',
  'http-streaming',
] as const;

export type ConnectionType = (typeof CONNECTION_TYPES)[number];

export function isConnectionType(value: unknown): value is ConnectionType {
  return typeof value === 'string' && (CONNECTION_TYPES as readonly string[]).includes(value);
}

/**
 * The streamed types: the server's messages travel on one long response (`GET <mount>/<clientId>`),
 * the client's by POST; their connects only keep the session alive, so the server answers them
 * at once (BAYEUX.md A46).
 */
export const STREAMED_CONNECTION_TYPES = ['eventsource', 'http-streaming'] as const satisfies readonly ConnectionType[];

export type StreamedConnectionType = (typeof STREAMED_CONNECTION_TYPES)[number];

export function isStreamedConnectionType(type: string): type is StreamedConnectionType {
  return (STREAMED_CONNECTION_TYPES as readonly string[]).includes(type);
}

/**
 * An idempotency key (a publish's `ext.idempotencyKey`, the HTTP API's `Idempotency-Key`,
 * `server.publish`'s `idempotencyKey`): 1 to 255 visible ASCII characters. A publish made again
 * with the same key, by the same user, within the server's `idempotencyWindow` publishes nothing.
 */
export function isIdempotencyKey(key: unknown): key is string {
  return typeof key === 'string' && /^[\x21-\x7e]{1,255}$/.test(key);
}
