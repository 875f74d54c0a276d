/**
 * Session binding by browser cookie (as CometD's BAYEUX_BROWSER): every HTTP response and
 * WebSocket upgrade under the mount path gives the client a random browser id, and a session
 * accepts messages only from requests that carry the id it was handshaken with, or over the push
 * line it is bound to. A clientId seen in a log or a proxy therefore does not let another party
 * take the session over.
 */
import type { IncomingMessage } from 'node:http';
import { randomBase64url } from './random.js';

export const BROWSER_COOKIE = 'BAYEUX_BROWSER';

/** The browser id a request carries, if it is well-formed. */
export function browserIdOf(req: IncomingMessage): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const [name, value] = part.trim().split('=', 2);
    if (name === BROWSER_COOKIE && value && /^[A-Za-z0-9_-]{16,64}$/.test(value)) return value;
  }
  return undefined;
}

export function newBrowserId(): string {
  return randomBase64url(18);
}

/**
 * The Set-Cookie value. HttpOnly (scripts never need it); SameSite=Lax over plain HTTP, and
 * SameSite=None; Secure over HTTPS so that cross-site clients (CORS, WebSocket) still send it.
 */
export function browserCookie(id: string, path: string, secure: boolean): string {
  return `${BROWSER_COOKIE}=${id}; Path=${path}; HttpOnly; ${secure ? 'SameSite=None; Secure' : 'SameSite=Lax'}`;
}

export function isSecure(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true || req.headers['x-forwarded-proto'] === 'https';
}
