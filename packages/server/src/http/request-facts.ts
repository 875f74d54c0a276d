import type { IncomingMessage } from 'node:http';
import type { RequestFacts } from '../transports/transport.js';

/** Browser ids the adapter read from, or gave to, each request (see security/browser-cookie.ts). */
const browsers = new WeakMap<IncomingMessage, { id: string; issued: boolean }>();
export function assignBrowser(req: IncomingMessage, browserId: string, issued: boolean): void {
  browsers.set(req, { id: browserId, issued });
}

/** The facts about a request that the server core and extensions see. */
export function requestFacts(req: IncomingMessage): RequestFacts {
  const facts: RequestFacts = { headers: req.headers, remoteAddress: req.socket.remoteAddress, url: req.url ?? '' };
  const browser = browsers.get(req);
  if (browser !== undefined) {
    facts.browserId = browser.id;
    if (browser.issued) facts.browserIdIssued = true;
  }
  return facts;
}
