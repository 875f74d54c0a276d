/**
 * Long-polls held at once for one browser (CometD's `maxSessionsPerBrowser`, BAYEUX.md A40).
 *
 * A browser keeps at most six HTTP/1.1 connections to one host, for all its tabs together. Six
 * tabs of a page that long-polls (CometD or Faye where the WebSocket is blocked) each hold one,
 * and the seventh tab's page, handshake and every other request to that host wait until a poll
 * returns: measured in Chromium, the seventh and eighth tabs neither loaded nor subscribed until a
 * publish released the polls, and missed what it carried. Past `maxSessionsPerBrowser` held polls
 * of one browser, a poll is answered at once with advice `{"multiple-clients": true, interval:
 * multiSessionInterval}` (the Bayeux advice for several clients of one browser): that tab polls
 * every `multiSessionInterval` ms instead of holding a connection, as CometD's server has it.
 *
 * A browser is told by its `BAYEUX_BROWSER` cookie, presented (not just given) on the poll, and
 * by its user agent, which in every browser names `Mozilla/`: clients in one Node process share
 * one cookie jar (cometd-nodejs-client) and have no such limit (Node's fetch sends `Sec-Fetch-Mode`
 * too, so that header tells nothing). Counted per node. Behind a proxy that speaks HTTP/2 to browsers the limit is not theirs: turn it off there
 * (0), or raise it.
 */
import type { RequestFacts } from './contract.js';

export class BrowserPolls {
  /** Held polls per browser id; an id leaves the map with its last poll. */
  private readonly held = new Map<string, number>();

  /** `limit`: polls one browser may have held at once (0: no limit). */
  constructor(private readonly limit: number) {}

  /** The browser a poll comes from, when it is one this limit is for (and the limit is on). */
  browserOf(request: RequestFacts): string | undefined {
    if (this.limit === 0 || request.browserId === undefined || request.browserIdIssued === true) return undefined;
    return request.headers['user-agent']?.includes('Mozilla/') === true ? request.browserId : undefined;
  }

  /** Counts a poll of `browser` as held, if the browser has fewer than the limit held; else false. */
  admit(browser: string): boolean {
    const count = this.held.get(browser) ?? 0;
    if (count >= this.limit) return false;
    this.held.set(browser, count + 1);
    return true;
  }

  /** A held poll of `browser` was answered. */
  leave(browser: string): void {
    const count = this.held.get(browser) ?? 0;
    if (count <= 1) this.held.delete(browser);
    else this.held.set(browser, count - 1);
  }

  /** Browsers with a poll held now (for tests and stats). */
  get browsers(): number {
    return this.held.size;
  }
}
