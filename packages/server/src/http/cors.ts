/**
 * Origin checks for WebSocket upgrades and cross-origin HTTP. A browser sends `Origin` on
 * cross-origin requests and on WebSocket upgrades; without a check, any page a user visits
 * could drive their session (CSRF / cross-site WebSocket hijacking).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Same-origin requests, requests without Origin (non-browser clients) and listed origins pass. */
export function originAllowed(req: IncomingMessage, allowed: readonly string[]): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  if (allowed.includes('*') || allowed.includes(origin)) return true;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

/**
 * Whether a callback-polling (JSONP) request comes from a page of a listed origin, told by its
 * Referer: a <script> request carries no Origin. A page cannot make the browser name another
 * origin there, only leave it out (`Referrer-Policy: no-referrer`), which is refused. Faye's
 * browser client handshakes over JSONP whenever the server is on another origin (its handshake
 * takes only long-polling, same-origin, or callback-polling), then moves to the WebSocket or CORS:
 * without this, a page of an origin the operator allowed could not use Faye unless JSONP were
 * opened to every site.
 */
export function referrerAllowed(req: IncomingMessage, allowed: readonly string[]): boolean {
  const referer = req.headers.referer;
  if (typeof referer !== 'string' || allowed.length === 0) return false;
  let origin: string;
  try {
    origin = new URL(referer).origin;
  } catch {
    return false;
  }
  return origin !== 'null' && (allowed.includes('*') || allowed.includes(origin));
}

/** Adds the CORS response headers for an allowed request that carries an Origin. */
export function corsHeaders(req: IncomingMessage, res: ServerResponse): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  // The origin is echoed, never "*": the CometD client sends credentials (withCredentials=true).
  res.setHeader('Access-Control-Allow-Origin', origin);
  res.setHeader('Access-Control-Allow-Credentials', 'true');
  res.setHeader('Vary', 'Origin');
}

/** Answers a CORS preflight (OPTIONS) for an allowed origin. */
export function preflight(req: IncomingMessage, res: ServerResponse): void {
  corsHeaders(req, res);
  res.setHeader('Access-Control-Allow-Methods', 'POST, GET, OPTIONS');
  const requested = req.headers['access-control-request-headers'];
  res.setHeader(
    'Access-Control-Allow-Headers',
    typeof requested === 'string' && /^[\w\-, ]{1,512}$/.test(requested)
      ? requested
      : 'Accept, Authorization, Content-Type, Pragma, X-Requested-With',
  );
  res.setHeader('Access-Control-Max-Age', '86400');
  res.writeHead(204).end();
}
