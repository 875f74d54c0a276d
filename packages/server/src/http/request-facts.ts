import type { IncomingMessage } from 'node:http';
import type { RequestFacts } from '../core/contract.js';

/**
 * The browser id the adapter read from, or gave to, a request (see security/browser-cookie.ts),
 * kept on the request under a symbol of this module: a property costs far less than a WeakMap
 * entry, and this happens on every HTTP request.
 */
const BROWSER = Symbol('perihelion.browser');
type Tagged = IncomingMessage & { [BROWSER]?: { id: string; issued: boolean } };

export function assignBrowser(req: IncomingMessage, browserId: string, issued: boolean): void {
  (req as Tagged)[BROWSER] = { id: browserId, issued };
}

/** The facts about a request that the server core and extensions see. */
export function requestFacts(req: IncomingMessage): RequestFacts {
  const facts: RequestFacts = { headers: req.headers, remoteAddress: req.socket.remoteAddress, url: req.url ?? '' };
  const browser = (req as Tagged)[BROWSER];
  if (browser !== undefined) {
    facts.browserId = browser.id;
    if (browser.issued) facts.browserIdIssued = true;
  }
  return facts;
}
