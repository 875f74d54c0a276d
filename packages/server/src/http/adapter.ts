/**
 * The node:http adapter: routes requests and upgrades under the mount path to the transports.
 * It only needs `request` and `upgrade` events, so it mounts in node:http, Express, Fastify,
 * Koa or Hono's node server (inboard) as well as in Perihelion's own server (outboard).
 *
 * Routes (BAYEUX.md pitfall 1):
 * - POST `<mount>`, `<mount>/`, `<mount>/<one segment>` (CometD appends /handshake, /connect,
 *   /disconnect): long-polling.
 * - GET with a `message` parameter on any of those paths: callback-polling (JSONP), when enabled.
 * - GET `<mount>/<clientId>` with `Accept: text/event-stream`: Server-Sent Events; with
 *   `Accept: application/x-ndjson`: HTTP streaming.
 * - WebSocket upgrade at `<mount>` (and `<mount>/`).
 * - GET `<mount>/client.js` and `<mount>/state.js`: the browser builds of @perihelion/client and
 *   @perihelion/state (no clientId has a dot).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { bayeuxError, isStreamedConnectionType } from '@perihelion/protocol';
import type { ServerCore } from '../core/server.js';
import { handleCallbackPolling } from '../transports/callback-polling.js';
import { BROWSER_SCRIPTS, serveBrowserScript } from './client-script.js';
import { ndjsonFramer } from '../transports/http-streaming.js';
import { handleLongPolling } from '../transports/long-polling.js';
import { refuseStream, sseFramer } from '../transports/sse.js';
import { StreamTransport, type Framer } from '../transports/stream.js';
import { WebSocketTransport } from '../transports/websocket.js';
import { browserCookie, browserIdOf, isSecure } from '../security/browser-cookie.js';
import { corsHeaders, originAllowed, preflight, referrerAllowed } from './cors.js';
import { assignBrowser, requestFacts } from './request-facts.js';
import { sendBatchError } from './responses.js';


/** What the adapter needs of the core: the transports' host, sessions for streams, and error and shutdown state. */
export type AdapterHost = Pick<ServerCore, 'options' | 'proxies' | 'browserIds' | 'browserLines' | 'counters' | 'process' | 'sessionFor' | 'reportError' | 'isClosed' | 'forwarding' | 'wheel'>;

export class HttpAdapter {
  readonly websocket: WebSocketTransport | null;
  readonly streams: StreamTransport | null;
  private readonly httpEnabled: boolean;

  constructor(private readonly core: AdapterHost) {
    const { transports } = core.options;
    this.websocket = transports.includes('websocket') ? new WebSocketTransport(core) : null;
    this.streams = transports.some(isStreamedConnectionType) ? new StreamTransport(core) : null;
    // Streamed transports send their client-to-server messages by POST too.
    this.httpEnabled = transports.some((t) => t !== 'websocket' && t !== 'callback-polling');
  }

  /** The sub-path the URL names under the mount path ('' for the mount path itself), or null when it is not under it. */
  private route(url: string | undefined): string | null {
    const raw = url ?? '/';
    const query = raw.indexOf('?');
    const path = query === -1 ? raw : raw.slice(0, query);
    const mount = this.core.options.path;
    if (path === mount) return '';
    const prefix = mount === '/' ? '/' : `${mount}/`;
    if (!path.startsWith(prefix)) return null;
    const sub = path.slice(prefix.length);
    return sub.includes('/') ? null : sub;
  }

  /** Handles the request if it is under the mount path; returns false to let others answer it. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    const sub = this.route(req.url);
    if (sub === null) return false;
    // A public, cacheable file: before the origin check (any site may embed the script) and
    // before the session cookie is set (a shared cache must not keep one).
    if ((req.method === 'GET' || req.method === 'HEAD') && Object.hasOwn(BROWSER_SCRIPTS, sub) && !(req.url ?? '').includes('message=')) {
      serveBrowserScript(sub, req, res);
      return true;
    }
    if (!originAllowed(req, this.core.options.allowedOrigins)) {
      sendBatchError(res, 403, 'forbidden', `origin ${req.headers.origin} is not allowed; add it to allowedOrigins`);
      return true;
    }
    if (req.method === 'OPTIONS') {
      preflight(req, res);
      return true;
    }
    corsHeaders(req, res);
    const cookie = this.identifyBrowser(req);
    if (cookie !== undefined) res.setHeader('Set-Cookie', cookie);
    if (req.method === 'GET') {
      this.handleGet(req, res, sub);
      return true;
    }
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'GET, POST, OPTIONS');
      sendBatchError(res, 405, 'methodNotAllowed', `this is a Bayeux endpoint: POST a JSON array of messages, or open a WebSocket; ${req.method} is not supported`);
      return true;
    }
    if (!this.httpEnabled) {
      sendBatchError(res, 400, 'badRequest', 'HTTP transports are disabled on this server; use a WebSocket');
      return true;
    }
    handleLongPolling(this.core, req, res, this.failed);
    return true;
  }

  private handleGet(req: IncomingMessage, res: ServerResponse, sub: string): void {
    const query = (req.url ?? '').includes('?') ? new URLSearchParams((req.url ?? '').split('?')[1]) : null;
    if (query?.has('message')) {
      // Off for everyone with `jsonp: false`, except the pages of the allowed origins (cors.ts).
      if (!this.core.options.jsonp && !referrerAllowed(req, this.core.options.allowedOrigins)) {
        return sendBatchError(res, 400, 'badRequest', 'callback-polling (JSONP) is disabled on this server; the operator can enable it with --jsonp, or for the pages of some origins (Faye handshakes over JSONP across origins) with --allowed-origins');
      }
      return this.guard(res, handleCallbackPolling(this.core, req, res, this.failed));
    }
    const accept = req.headers.accept ?? '';
    const framer = accept.includes('text/event-stream') ? sseFramer : accept.includes('application/x-ndjson') ? ndjsonFramer : null;
    if (!framer || sub === '') {
      res.setHeader('Allow', 'GET, POST, OPTIONS');
      return sendBatchError(
        res,
        405,
        'methodNotAllowed',
        'this is a Bayeux endpoint: POST a JSON array of messages, open a WebSocket, or GET <path>/<clientId> with Accept: text/event-stream or application/x-ndjson',
      );
    }
    this.openStream(req, res, sub, framer);
  }

  private openStream(req: IncomingMessage, res: ServerResponse, clientId: string, framer: Framer): void {
    if (!this.streams || !this.core.options.transports.includes(framer.transport)) {
      return sendBatchError(res, 400, 'badRequest', `${framer.transport} is disabled on this server; offered: ${this.core.options.transports.join(', ')}`);
    }
    // A stream reads the session's messages: it must come from the session's own browser.
    const facts = requestFacts(req, this.core.proxies);
    const session = this.core.sessionFor(clientId, { transport: framer.transport, request: facts });
    if (session) return this.streams.open(req, res, session, framer, facts);
    // Another node may hold the session (no sticky sessions): the stream stays here, fed by that node.
    const streams = this.streams;
    const line = streams.line(res, framer, facts, clientId);
    if (!line) return;
    this.guard(
      res,
      this.core.forwarding.attach(clientId, line, facts, () => streams.start(req, res, line, framer, clientId)).then((attached) => {
        if (attached) return;
        const body = JSON.stringify([{ channel: '/meta/connect', successful: false, error: bayeuxError('clientUnknown', [clientId]), advice: { reconnect: 'handshake', interval: 0 } }]);
        // An EventSource learns only from what its stream carries (sse.ts).
        if (framer === sseFramer) return refuseStream(req, res, body);
        res.writeHead(404, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-cache, no-store' }).end(body);
      }),
    );
  }

  /** process() never throws for client input; a rejection is a bug: answer 500 and keep serving. */
  private guard(res: ServerResponse, work: Promise<void>): void {
    work.catch((error: unknown) => this.failed(res, error));
  }

  /**
   * A failure inside the server while answering `res`: reported, and the client answered 500 (or
   * cut, once answering began). Made once, not per request.
   */
  private readonly failed = (res: ServerResponse, error: unknown): void => {
    this.core.reportError(error);
    if (!res.headersSent) res.writeHead(500).end();
    else res.destroy();
  };

  /** Handles a WebSocket upgrade under the mount path; returns false to let others answer it. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    if (this.route(req.url) !== '') return false;
    if (!this.websocket || !originAllowed(req, this.core.options.allowedOrigins) || this.core.isClosed) {
      const status = !this.websocket ? '404 Not Found' : this.core.isClosed ? '503 Service Unavailable' : '403 Forbidden';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return true;
    }
    const address = this.core.proxies.clientAddress(req.socket.remoteAddress, req.headers) ?? 'unknown';
    if (!this.websocket.admits(address)) {
      // Before the upgrade, so a client that cannot open a WebSocket falls back to HTTP, where
      // `maxSessionsPerIp` bounds it.
      this.core.counters.websocketsRefused++;
      const body = `at most ${this.core.options.maxWebsocketsPerIp} WebSockets per address`;
      socket.end(`HTTP/1.1 429 Too Many Requests\r\nRetry-After: 10\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      return true;
    }
    // An upgrade is never given a browser id: Faye opens its WebSocket while its HTTP handshake
    // is in flight, and a cookie set on the 101 would replace the one that handshake was given,
    // so the client's next HTTP request would no longer speak for its session. A socket speaks
    // for the sessions handshaken on it (see security/session-binding.ts).
    const known = this.core.options.sessionBinding !== 'none' ? browserIdOf(req) : undefined;
    if (known !== undefined) assignBrowser(req, known, false);
    this.websocket.upgrade(req, socket, head);
    return true;
  }

  /**
   * Reads the request's browser id (session binding), or makes one; returns the Set-Cookie value
   * when a new one was made.
   */
  private identifyBrowser(req: IncomingMessage): string | undefined {
    if (this.core.options.sessionBinding === 'none') return undefined;
    const known = browserIdOf(req);
    if (known !== undefined) {
      assignBrowser(req, known, false);
      return undefined;
    }
    const id = this.core.browserIds.give(this.core.proxies.clientAddress(req.socket.remoteAddress, req.headers));
    const cookie = browserCookie(id, this.core.options.cookiePath || this.core.options.path, isSecure(req), this.core.options.cookieSameSite);
    assignBrowser(req, id, true);
    return cookie;
  }

  close(): void {
    this.websocket?.close();
    this.streams?.close();
  }
}
