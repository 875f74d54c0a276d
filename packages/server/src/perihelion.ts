/**
 * Perihelion: the Bayeux core plus its HTTP and WebSocket adapter. Mount it in an existing
 * node:http server (`attach`, or `handleRequest`/`handleUpgrade` from a framework), or let it
 * run its own (`listen`).
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { HttpApi } from './api/http-api.js';
import { Metrics } from './api/metrics.js';
import { OPERATION_PATHS, handleOperation } from './api/operations.js';
import { calloutExtension } from './callouts/allow.js';
import { Webhooks } from './callouts/webhooks.js';
import { BayeuxServer, type ServerEvents } from './core/server.js';
import { HttpAdapter } from './http/adapter.js';
import type { ServerOptions } from './options.js';

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface ListenOptions {
  /** Default: 8080. 0 picks a free port. */
  port?: number;
  /** Default: all interfaces. */
  host?: string;
  /** Answers requests outside the mount path (a landing page, an app). Default: 404. */
  fallback?: RequestHandler;
}

/** The server's events; 'error' also reports failed call-outs and webhook requests. */
export type PerihelionEvents = ServerEvents;

export class Perihelion extends BayeuxServer {
  private readonly http: HttpAdapter;
  private readonly api: HttpApi;
  readonly metrics: Metrics;
  private servers: Server[] = [];
  private owned: Server | null = null;
  /** Webhook deliveries (`dropped()`, `stats()`, `close()`); null without the `webhooks` option. */
  readonly webhooks: Webhooks | null;

  constructor(options: ServerOptions = {}) {
    super(options);
    this.http = new HttpAdapter(this);
    this.api = new HttpApi(this, options.apiKey);
    this.metrics = new Metrics(this);
    this.deliveryObserver = (ms) => this.metrics.deliveryLatency.observe(ms / 1000);
    const report = (error: unknown): void => this.reportError(error);
    if (options.callouts && options.callouts.length > 0) this.addExtension(calloutExtension(options.callouts, report));
    this.webhooks = options.webhooks && options.webhooks.length > 0 ? new Webhooks(options.webhooks, this, report) : null;
  }

  /**
   * Handles the request if it is Perihelion's: under the mount path, the HTTP API (/api/*) or an
   * operations endpoint (/health, /ready, /metrics). False means "not mine".
   */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.http.handleRequest(req, res)) return true;
    const path = (req.url ?? '/').split('?')[0]!;
    if (this.api.handles(path)) {
      this.api.handle(req, res, path);
      return true;
    }
    if (this.options.operations && OPERATION_PATHS.has(path)) {
      handleOperation(this, this.metrics, req, res, path).catch(() => res.destroy());
      return true;
    }
    return false;
  }

  /** Handles a WebSocket upgrade at the mount path; false means "not mine". */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    return this.http.handleUpgrade(req, socket, head);
  }

  /** Adds Perihelion to an existing node:http server; other paths stay with the server's own handlers. */
  attach(server: Server): this {
    // The server's own request handlers run only for requests Perihelion does not answer.
    const own = server.listeners('request') as RequestHandler[];
    server.removeAllListeners('request');
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (this.handleRequest(req, res)) return;
      for (const handler of own) handler.call(server, req, res);
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.http.handleUpgrade(req, socket, head)) return;
      // Nobody else listens for upgrades: refuse instead of leaving the socket hanging.
      if (server.listenerCount('upgrade') === 1) socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    this.servers.push(server);
    return this;
  }

  /** Starts a node:http server of its own; resolves to the address it listens on. */
  async listen(options: ListenOptions = {}): Promise<AddressInfo> {
    const fallback: RequestHandler =
      options.fallback ??
      ((_req, res) => {
        res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`Not found. The Bayeux endpoint is ${this.options.path}\n`);
      });
    const server = createHttpServer((req, res) => {
      if (!this.handleRequest(req, res)) fallback(req, res);
    });
    // Held connects last up to `timeout`; keep sockets open a little longer than that.
    server.keepAliveTimeout = 5_000;
    server.requestTimeout = 0;
    server.headersTimeout = 30_000;
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (!this.http.handleUpgrade(req, socket, head)) socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    this.owned = server;
    this.servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 8080, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server.address() as AddressInfo;
  }

  /** The address of the server started by `listen`, if any. */
  address(): AddressInfo | null {
    return (this.owned?.address() as AddressInfo | null) ?? null;
  }

  /**
   * Graceful shutdown: drain (no new sessions or publishes; held connects answered with advice to
   * connect again a second later; waiting messages collected, up to `drainTimeout`), close
   * WebSockets with 1001 (going away) and streams, then close the server's own listener.
   */
  override close(): Promise<void> {
    this.shuttingDown ??= this.stop();
    return this.shuttingDown;
  }

  private shuttingDown: Promise<void> | null = null;

  private async stop(): Promise<void> {
    // While draining, new sessions are refused but the listener stays open: server.close() would
    // also drop the idle keep-alive connections that clients need to collect what they are owed.
    await super.close();
    this.http.close();
    const owned = this.owned;
    if (!owned) return;
    await new Promise<void>((resolve) => {
      // Connections whose last answer is still being written become idle a moment later;
      // close them as they do, instead of waiting for their keep-alive timeout.
      const sweep = setInterval(() => owned.closeIdleConnections(), 50);
      owned.close(() => {
        clearInterval(sweep);
        resolve();
      });
    });
  }
}

export function createServer(options: ServerOptions = {}): Perihelion {
  return new Perihelion(options);
}
