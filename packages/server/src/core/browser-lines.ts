/**
 * The lines one browser holds open at once: long-polls held and streams (SSE, HTTP streaming),
 * against CometD's `maxSessionsPerBrowser` (BAYEUX.md A40).
 *
 * A browser keeps at most six HTTP/1.1 connections to one host, for all its tabs together. Six
 * tabs of a page that long-polls or streams (CometD or Faye where the WebSocket is blocked; Faye
 * then takes EventSource) each hold one, and the seventh tab's page, handshake and every other
 * request to that host wait until a line returns; a stream never does. Measured in Chromium: with
 * CometD long-polling the seventh and eighth tabs neither loaded nor subscribed until a publish
 * released the polls, and missed what it carried; with Faye on EventSource the sixth tab stalled
 * after its handshake and the seventh and eighth never loaded.
 *
 * Past `maxSessionsPerBrowser` lines of one browser on a node:
 * - a poll is answered at once with advice `{"multiple-clients": true, interval:
 *   multiSessionInterval}` (the Bayeux advice for several clients of one browser): that tab polls
 *   every `multiSessionInterval` ms instead of holding a connection, as CometD's server has it;
 * - a stream is refused (429): Faye's EventSource then fails and Faye long-polls, as above.
 *
 * A browser is told by its `BAYEUX_BROWSER` cookie, presented (not just given) on the request, and
 * by its user agent, which in every browser names `Mozilla/`: clients in one Node process share
 * one cookie jar (cometd-nodejs-client) and have no such limit (Node's fetch sends `Sec-Fetch-Mode`
 * too, so that header tells nothing). WebSockets are not counted (browsers limit them apart, and
 * far higher). Behind a proxy that speaks HTTP/2 to browsers the limit is not theirs: turn it off
 * there (0), or raise it.
 */
import type { RequestFacts } from './contract.js';

export class BrowserLines {
  /** Open lines per browser id; an id leaves the map with its last line. */
  private readonly held = new Map<string, number>();

  /** `limit`: lines one browser may hold open at once (0: no limit). */
  constructor(private readonly limit: number) {}

  /** The browser a request comes from, when it is one this limit is for (and the limit is on). */
  browserOf(request: RequestFacts): string | undefined {
    if (this.limit === 0 || request.browserId === undefined || request.browserIdIssued === true) return undefined;
    return request.headers['user-agent']?.includes('Mozilla/') === true ? request.browserId : undefined;
  }

  /** Counts a line of `browser` as open, if the browser has fewer than the limit open; else false. */
  admit(browser: string): boolean {
    const count = this.held.get(browser) ?? 0;
    if (count >= this.limit) return false;
    this.held.set(browser, count + 1);
    return true;
  }

  /** Counts a line of `browser` as open past the limit: one that replaces another of its lines, about to end. */
  enter(browser: string): void {
    this.held.set(browser, (this.held.get(browser) ?? 0) + 1);
  }

  /** A line of `browser` counted by `admit` was answered or closed. */
  leave(browser: string): void {
    const count = this.held.get(browser) ?? 0;
    if (count <= 1) this.held.delete(browser);
    else this.held.set(browser, count - 1);
  }
}
