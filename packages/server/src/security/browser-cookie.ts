/**
 * The browser cookie (as CometD's BAYEUX_BROWSER): every HTTP response under the mount path to a
 * request without one gives the client a random browser id, which session binding
 * (session-binding.ts) ties sessions to, so that a clientId seen in a log or a proxy does not let
 * another party take a session over.
 */
import type { IncomingMessage } from 'node:http';
import type { ScalarOptions } from '../option-table.js';
import { randomBase64url } from './random.js';

export const BROWSER_COOKIE = 'BAYEUX_BROWSER';

const WELL_FORMED_ID = /^[A-Za-z0-9_-]{16,64}$/;
const NAME_AND_EQUALS = `${BROWSER_COOKIE}=`;

/**
 * The browser id a request carries, if it is well-formed (the first well-formed one, if the
 * header names the cookie more than once). Found by searching the header rather than splitting
 * it: this runs on every HTTP request.
 */
export function browserIdOf(req: IncomingMessage): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (let at = header.indexOf(NAME_AND_EQUALS); at !== -1; at = header.indexOf(NAME_AND_EQUALS, at + 1)) {
    // The name must begin a cookie (the header's start, or after "; "), not end another's name.
    const before = at === 0 ? ';' : header[at - 1];
    if (before !== ';' && before !== ' ' && before !== '\t') continue;
    let end = header.indexOf(';', at);
    if (end === -1) end = header.length;
    const value = header.slice(at + NAME_AND_EQUALS.length, end).trim();
    if (WELL_FORMED_ID.test(value)) return value;
  }
  return undefined;
}

export function newBrowserId(): string {
  return randomBase64url(18);
}

/** Addresses remembered at once; past it the oldest is forgotten (it then gets a new id, as before). */
const MAX_REMEMBERED_ADDRESSES = 10_000;

/**
 * Gives cookie-less requests a browser id: the one first given to the same address within the
 * last `cookieReuseWindow` ms. Clients that share a cookie jar (cometd-nodejs-client keeps one for
 * its process; two tabs on a browser's first visit) send their handshakes together, all without a
 * cookie: had each response set an id of its own, the jar would keep whichever came last, and
 * every session bound to another would be refused (402) on its next request and handshake again,
 * dropping subscriptions made outside a handshake listener. The requests of one jar do not reach
 * the server in the order they left (each on a socket of its own), so the id is given for a time,
 * not until its first use. Other parties behind the same address whose first requests fall in that
 * time share it: between them a session's binding is its clientId alone, as for clients that keep
 * no cookies (docs/security.md).
 */
export class BrowserIds {
  /** By address, in the order first given: the id and when. */
  private readonly recent = new Map<string, { id: string; at: number }>();

  constructor(private readonly windowMs: number) {}

  /** `now` in ms on a monotonic clock: a wall clock set back would keep an id given for longer than the window. */
  give(address: string | undefined, now = performance.now()): string {
    if (address === undefined || this.windowMs === 0) return newBrowserId();
    const given = this.recent.get(address);
    if (given !== undefined) {
      if (now - given.at < this.windowMs) return given.id;
      this.recent.delete(address);
    }
    const id = newBrowserId();
    this.recent.set(address, { id, at: now });
    this.forget(now);
    return id;
  }

  /** Drops the entries past the window (the oldest come first), and the oldest ones while over the bound. */
  private forget(now: number): void {
    for (const [address, given] of this.recent) {
      if (now - given.at < this.windowMs && this.recent.size <= MAX_REMEMBERED_ADDRESSES) break;
      this.recent.delete(address);
    }
  }
}

export type CookieSameSite = ScalarOptions['cookieSameSite'];

const SAME_SITE_ATTRIBUTE: Record<CookieSameSite, string> = { omit: '', lax: '; SameSite=Lax', strict: '; SameSite=Strict', none: '; SameSite=None' };

/**
 * The Set-Cookie value: HttpOnly (scripts never need it), Secure over HTTPS. SameSite is left out
 * by default: browsers treat such a cookie as Lax, and older cookie parsers refuse the attribute
 * outright (Ruby's cookiejar 0.3, under the Ruby Faye client, raises "Unknown cookie parameter
 * 'samesite'" and the client never gets past its handshake). SameSite=None needs Secure, so it is
 * sent with it even over plain HTTP, where browsers then drop the cookie.
 */
export function browserCookie(id: string, path: string, secure: boolean, sameSite: CookieSameSite): string {
  return `${BROWSER_COOKIE}=${id}; Path=${path}; HttpOnly${secure || sameSite === 'none' ? '; Secure' : ''}${SAME_SITE_ATTRIBUTE[sameSite]}`;
}

export function isSecure(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true || req.headers['x-forwarded-proto'] === 'https';
}
