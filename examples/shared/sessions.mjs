/**
 * The app's own login, shared by the four examples: a random token per login, kept in memory and
 * sent to the browser as the `sid` cookie (HttpOnly, SameSite=Lax). Perihelion knows nothing of
 * it; the `authenticate` option in bayeux.mjs asks this store who a handshake belongs to.
 */
import { randomBytes } from 'node:crypto';

export const COOKIE = 'sid';

/** User names the demo login accepts: `42`, `alice`, `bob-2`… (no passwords: it is a demo). */
export const USER_NAME = /^[A-Za-z0-9_-]{1,64}$/;

export function createSessions() {
  const byToken = new Map(); // token → { user, id }
  return {
    /** Logs `user` in and returns the new session's token (the cookie's value). */
    login(user) {
      const token = randomBytes(24).toString('base64url');
      // `id` names the login without being the secret (Perihelion keeps it in the identity's claims).
      byToken.set(token, { user, id: randomBytes(9).toString('base64url') });
      return token;
    },
    /** Ends a login; returns what it was ({ user, id }), or null. */
    logout(token) {
      const login = this.find(token);
      if (login) byToken.delete(token);
      return login;
    },
    /** The login a token belongs to ({ user, id }), or null. */
    find(token) {
      return (typeof token === 'string' && byToken.get(token)) || null;
    },
    /** The user a token belongs to, or null. */
    userOf(token) {
      return this.find(token)?.user ?? null;
    },
  };
}

/** The value of cookie `name` in a `Cookie` header, or null. */
export function readCookie(header, name = COOKIE) {
  if (typeof header !== 'string') return null;
  for (const part of header.split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === name) return decodeURIComponent(part.slice(at + 1).trim());
  }
  return null;
}

/** The `Set-Cookie` value for a session token (for frameworks without a cookie helper of their own). */
export function sessionCookie(token) {
  return `${COOKIE}=${token}; Path=/; HttpOnly; SameSite=Lax`;
}
