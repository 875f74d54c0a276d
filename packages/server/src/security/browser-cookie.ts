/**
 * The browser cookie (as CometD's BAYEUX_BROWSER): every HTTP response under the mount path to a
 * request without one gives the client a random browser id, which session binding
 * (session-binding.ts) ties sessions to, so that a clientId seen in a log or a proxy does not let
 * another party take a session over.
 */
import type { IncomingMessage } from 'node:http';
import type { ScalarOptions } from '../option-table.js';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
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

/** Characters of the time bucket at the start of a derived id (base 36: enough until the year 2059 with 1 ms buckets). */
const BUCKET_CHARS = 8;
/** A derived id: its bucket, then a MAC of the address and the bucket (18 bytes, base64url). */
const DERIVED_ID = /^[0-9a-z]{8}[A-Za-z0-9_-]{24}$/;

/**
 * Gives cookie-less requests a browser id derived from their address and the time: every request
 * from one address within a `cookieReuseWindow` bucket gets the same id, on every node of the
 * cluster, which can tell such ids apart from any other. Clients that share a cookie jar
 * (cometd-nodejs-client keeps one for its process; two tabs on a browser's first visit) send their
 * handshakes together, all without a cookie: had each response set an id of its own, the jar
 * would keep whichever came last, and every session bound to another would be refused (402) on
 * its next request and handshake again, dropping subscriptions made outside a handshake listener.
 * The requests of one jar do not reach the server in the order they left (each on a socket of its
 * own), nor, behind a balancer without affinity, the same node.
 *
 * An id is its time bucket and a MAC of the address and that bucket under the key every node
 * shares (the engine's `browserKey`): any node can check that an id was given to an address, and
 * when. Two ids given to one address in the same or adjacent buckets (`sameBrowser`) are taken
 * for one browser, so a jar whose handshakes straddle a bucket's edge is still one. Other parties
 * behind the same address whose first requests fall that close share the binding: between them a
 * session's binding is its clientId alone, as for clients that keep no cookies (docs/security.md).
 */
export class BrowserIds {
  /** Until the engine's key is known: this process's own (ids it gives meanwhile are checked by it alone). */
  private key = randomBytes(32);

  constructor(private readonly windowMs: number) {}

  /** Takes the key every node of the cluster shares (hex). */
  useKey(hex: string): void {
    if (hex !== '') this.key = Buffer.from(hex, 'hex');
  }

  /** `now`: ms since the epoch, the clock every node shares (a skew under the window is absorbed by `sameBrowser`). */
  give(address: string | undefined, now = Date.now()): string {
    if (address === undefined || this.windowMs === 0) return newBrowserId();
    return this.derive(address, Math.floor(now / this.windowMs));
  }

  /** Whether `a` and `b` were both given to `address`, in the same or adjacent buckets. */
  sameBrowser(a: string, b: string, address: string): boolean {
    if (this.windowMs === 0 || !DERIVED_ID.test(a) || !DERIVED_ID.test(b)) return false;
    const bucketA = parseInt(a.slice(0, BUCKET_CHARS), 36);
    const bucketB = parseInt(b.slice(0, BUCKET_CHARS), 36);
    return Math.abs(bucketA - bucketB) <= 1 && this.derivedFor(a, bucketA, address) && this.derivedFor(b, bucketB, address);
  }

  private derive(address: string, bucket: number): string {
    const mac = createHmac('sha256', this.key).update(`${address}\n${bucket}`).digest().subarray(0, 18).toString('base64url');
    return bucket.toString(36).padStart(BUCKET_CHARS, '0') + mac;
  }

  private derivedFor(id: string, bucket: number, address: string): boolean {
    const expected = Buffer.from(this.derive(address, bucket));
    const given = Buffer.from(id);
    return given.length === expected.length && timingSafeEqual(given, expected);
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
