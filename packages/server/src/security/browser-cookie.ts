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
