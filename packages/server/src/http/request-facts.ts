import type { IncomingMessage } from 'node:http';
import type { RequestFacts } from '../core/contract.js';
import type { ProxyTrust } from './client-address.js';
import { clientCertificateOf } from './tls.js';

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

/** The facts about a request that the server core and extensions see; the address is the client's, past trusted `proxies`. */
export function requestFacts(req: IncomingMessage, proxies: ProxyTrust): RequestFacts {
  const facts: RequestFacts = { headers: req.headers, remoteAddress: proxies.clientAddress(req.socket.remoteAddress, req.headers), url: req.url ?? '' };
  const certificate = clientCertificateOf(req.socket);
  if (certificate !== undefined) facts.clientCertificate = certificate;
  const browser = (req as Tagged)[BROWSER];
  if (browser !== undefined) {
    facts.browserId = browser.id;
    if (browser.issued) facts.browserIdIssued = true;
  }
  return facts;
}
