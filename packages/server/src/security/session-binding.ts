/**
 * Session binding: which requests may speak for a session (BAYEUX_BROWSER, as in CometD).
 *
 * Bayeux identifies a session by its clientId alone (§clientId), and many correct clients keep no
 * cookies: plain HTTP clients in any language, curl, Node's EventSource, devices and proxies that
 * strip cookies, browsers that block a third-party cookie. A clientId can also leak (logs, proxies,
 * the EventSource URL). The modes weigh the two:
 *
 * - `cookie` (default): a session binds to its browser cookie once the client has presented it:
 *   at the handshake, if the request already carried one, or on its first later request that
 *   carries the cookie it was given. From then on only that browser (or the session's own push
 *   line) speaks for it. A client that never presents the cookie is identified by its clientId.
 * - `strict`: only the browser the session was handshaken from (or its push line) speaks for it,
 *   from the first request on; a client that keeps no cookies cannot use HTTP transports.
 * - `none`: the clientId alone, always (and no cookie is issued).
 *
 * In `cookie` and `strict` a WebSocket session is bound to its socket, and one exception keeps Faye
 * working: it opens its WebSocket while its HTTP handshake is still in flight, so the upgrade
 * carries no cookie yet. A WebSocket whose upgrade carried no browser id at all may speak for
 * sessions handshaken from the same remote address. An upgrade carrying another browser's id never
 * may.
 */
import type { ScalarOptions } from '../option-table.js';
import type { ProcessContext } from '../core/contract.js';

export type SessionBinding = ScalarOptions['sessionBinding'];

/** What the binding needs to know of a session, and the one fact it records on it. */
export interface BindableSession {
  /** The browser id the handshake carried or was given (undefined over a cookie-less upgrade). */
  readonly browserId: string | undefined;
  /** Set once the client has presented `browserId`: from then on it must keep presenting it. */
  browserConfirmed: boolean;
  readonly remoteAddress: string | undefined;
  /** The push line it was handshaken on, and the one it is bound to now. */
  readonly origin: unknown;
  readonly connection: unknown;
}

/** Which browser ids are one browser's: those given to one address at nearly the same time (browser-cookie.ts). */
export interface BrowserIdentity {
  sameBrowser(a: string, b: string, address: string): boolean;
}

/**
 * Whether a request may speak for `session`. In `cookie` mode the first request that presents the
 * session's own cookie confirms the binding (a side effect, recorded on the session).
 */
export function speaksFor(mode: SessionBinding, session: BindableSession, context: ProcessContext, browsers?: BrowserIdentity): boolean {
  if (mode === 'none') return true;
  const line = context.connection;
  if (line && (line === session.origin || line === session.connection)) return true;
  const { browserId, browserIdIssued, remoteAddress } = context.request;
  // A cookie this server has just issued on this very request proves nothing: it was not presented.
  const presented = browserIdIssued === true ? undefined : browserId;
  if (session.browserId !== undefined && presented === session.browserId) {
    session.browserConfirmed = true;
    return true;
  }
  // The ids one cookie jar was given either side of a window's edge, its first requests having
  // left together (to any node: every node gives the same id in a window, browser-cookie.ts). The
  // jar keeps the last one set, which its other sessions then present: they are one browser.
  if (presented !== undefined && session.browserId !== undefined && remoteAddress !== undefined && remoteAddress === session.remoteAddress && browsers?.sameBrowser(presented, session.browserId, remoteAddress) === true) {
    session.browserConfirmed = true;
    return true;
  }
  if (line !== undefined && presented === undefined && remoteAddress !== undefined && session.remoteAddress === remoteAddress) return true;
  // `cookie` mode: a cookie-less request speaks for a session made over HTTP (so given a cookie)
  // whose client has never presented that cookie. Another browser's cookie never does.
  return mode === 'cookie' && presented === undefined && session.browserId !== undefined && !session.browserConfirmed;
}
