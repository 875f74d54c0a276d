/**
 * The node:http adapter: routes requests and upgrades under the mount path to the transports.
 * It only needs `request` and `upgrade` events, so it mounts in node:http, Express, Fastify,
 * Koa or Hono's node server (inboard) as well as in Perihelion's own server (outboard).
 *
 * Paths (BAYEUX.md pitfall 1): POST to `<mount>`, `<mount>/`, and `<mount>/<one segment>`
 * (CometD appends /handshake, /connect, /disconnect); WebSocket upgrades at `<mount>`
 * (and `<mount>/`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { BayeuxServer } from '../core/server.js';
import { handleLongPolling } from '../transports/long-polling.js';
import { WebSocketTransport } from '../transports/websocket.js';
import { corsHeaders, originAllowed, preflight } from './cors.js';
import { sendBatchError } from './responses.js';

export class HttpAdapter {
  readonly websocket: WebSocketTransport | null;
  private readonly httpEnabled: boolean;

  constructor(private readonly core: BayeuxServer) {
    const { transports } = core.options;
    this.websocket = transports.includes('websocket') ? new WebSocketTransport(core) : null;
    this.httpEnabled = transports.includes('long-polling') || transports.includes('cross-origin-long-polling');
  }

  /** Whether the URL is under the mount path, and which sub-path it names. */
  private route(url: string | undefined): { sub: string } | null {
    const path = (url ?? '/').split('?')[0]!;
    const mount = this.core.options.path;
    if (path === mount) return { sub: '' };
    const prefix = mount === '/' ? '/' : `${mount}/`;
    if (!path.startsWith(prefix)) return null;
    const sub = path.slice(prefix.length);
    return sub.includes('/') ? null : { sub };
  }

  /** Handles the request if it is under the mount path; returns false to let others answer it. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (!this.route(req.url)) return false;
    if (!originAllowed(req, this.core.options.allowedOrigins)) {
      sendBatchError(res, 403, `origin ${req.headers.origin} is not allowed; add it to allowedOrigins`);
      return true;
    }
    if (req.method === 'OPTIONS') {
      preflight(req, res);
      return true;
    }
    corsHeaders(req, res);
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST, OPTIONS');
      sendBatchError(res, 405, `this is a Bayeux endpoint: POST a JSON array of messages, or open a WebSocket; ${req.method} is not supported`);
      return true;
    }
    if (!this.httpEnabled) {
      sendBatchError(res, 400, 'long-polling is disabled on this server; use a WebSocket');
      return true;
    }
    handleLongPolling(this.core, req, res).catch((error: unknown) => {
      // process() never throws for client input; this is a bug, so answer 500 and keep serving.
      console.error('long-polling request failed', error);
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    });
    return true;
  }

  /** Handles a WebSocket upgrade under the mount path; returns false to let others answer it. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const route = this.route(req.url);
    if (!route || route.sub !== '') return false;
    if (!this.websocket || !originAllowed(req, this.core.options.allowedOrigins) || this.core.isClosed) {
      const status = !this.websocket ? '404 Not Found' : this.core.isClosed ? '503 Service Unavailable' : '403 Forbidden';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return true;
    }
    this.websocket.upgrade(req, socket, head);
    return true;
  }

  close(): void {
    this.websocket?.close();
  }
}
