/**
 * Which transport next, and the registry that makes one (cf. cometd TransportRegistry.js).
 *
 * The candidates are the application's order (`transports`), less the types this environment
 * lacks and those that failed here: a type that proved blocked (a refused upgrade, a POST
 * without CORS, a stream buffered by a proxy) is skipped for `transportRetry` ms, or until every
 * type has failed; then it is tried again. The server's `supportedConnectionTypes` has the last
 * word.
 */
import { STREAMED_CONNECTION_TYPES, isStreamedConnectionType, type ConnectionType } from '@perihelion/protocol';
import type { ResolvedOptions } from './options.js';
import { CallbackPolling } from './transports/callback-polling.js';
import { LongPolling } from './transports/long-polling.js';
import { EventSourceTransport, HttpStreamingTransport } from './transports/stream.js';
import type { Transport, TransportContext } from './transports/transport.js';
import { WebSocketTransport } from './transports/websocket.js';

/** Types that can carry a handshake (the streamed ones need a session first). */
const HANDSHAKE_TYPES: readonly ConnectionType[] = ['websocket', 'long-polling', 'callback-polling'];

export class Negotiation {
  /**
   * When each type that failed here may be tried again (ms since the epoch; Infinity: once every
   * type has failed).
   */
  private readonly blockedUntil = new Map<ConnectionType, number>();

  constructor(private readonly options: ResolvedOptions) {}

  /** The types worth trying, in the application's order. */
  usable(): ConnectionType[] {
    const env = this.options.env;
    const now = Date.now();
    return this.options.transports.filter((type) => {
      if ((this.blockedUntil.get(type) ?? 0) > now) return false;
      if (type === 'websocket') return env.WebSocket !== undefined;
      if (type === 'eventsource') return env.EventSource !== undefined && env.fetch !== undefined;
      if (type === 'callback-polling') return env.document !== undefined && this.options.callbackPolling;
      return env.fetch !== undefined;
    });
  }

  /** The type to handshake over; undefined when this environment can use none. */
  forHandshake(): ConnectionType | undefined {
    let usable = this.usable();
    if (usable.length === 0 && this.blockedUntil.size > 0) {
      // Everything failed once (offline?): forget and try again from the top, with backoff.
      this.blockedUntil.clear();
      usable = this.usable();
    }
    const first = usable.find((t) => HANDSHAKE_TYPES.includes(t) || isStreamedConnectionType(t));
    if (first === undefined) return undefined;
    // Streamed types handshake over a plain POST, then switch.
    return isStreamedConnectionType(first) ? 'long-polling' : first;
  }

  /**
   * The type for the session the server opened over `handshake`: the first usable one it
   * offers. JSONP only if the handshake needed it too: it is the last resort, not a choice.
   */
  forSession(offered: readonly string[], handshake: ConnectionType): ConnectionType | undefined {
    return this.usable().find((t) => offered.includes(t) && (t !== 'callback-polling' || handshake === 'callback-polling'));
  }

  /** The first usable type that neither streams nor needs an upgrade: the way on from a buffered stream. */
  polling(): ConnectionType | undefined {
    return this.usable().find((t) => !isStreamedConnectionType(t) && t !== 'websocket');
  }

  /**
   * The type a live session on `current` may move to without a new handshake: a WebSocket the
   * application prefers, the server offers, and that is usable again (its failure is older than
   * `transportRetry`).
   */
  upgrade(current: ConnectionType, offered: readonly string[]): ConnectionType | undefined {
    if (current === 'websocket' || !offered.includes('websocket')) return undefined;
    const usable = this.usable();
    return usable.includes('websocket') && usable.indexOf('websocket') < this.options.transports.indexOf(current) ? 'websocket' : undefined;
  }

  /**
   * `type` does not get through here: it is not tried again for `transportRetry` ms and up to half
   * as long again, at random (clients refused together do not all come back together), or until
   * every type has failed.
   */
  blocked(type: ConnectionType): void {
    const retry = this.options.transportRetry;
    const at = retry === 0 ? Infinity : Date.now() + retry * (1 + Math.random() / 2);
    this.blockedUntil.set(type, at);
    // The streamed types send by POST too: if a POST cannot get through, neither can they.
    if (type === 'long-polling') for (const t of STREAMED_CONNECTION_TYPES) this.blockedUntil.set(t, at);
  }
}

/** A new line of `type`: one transport instance per line generation. */
export function openTransport(type: ConnectionType, context: TransportContext, openTimeout: number): Transport {
  return type === 'websocket'
    ? new WebSocketTransport(context, openTimeout)
    : type === 'eventsource'
      ? new EventSourceTransport(context)
      : type === 'http-streaming'
        ? new HttpStreamingTransport(context)
        : type === 'callback-polling'
          ? new CallbackPolling(context)
          : new LongPolling(context);
}
