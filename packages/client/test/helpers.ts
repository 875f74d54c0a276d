/** Test helpers: a real Perihelion server on a loopback port, and a network the test can cut. */
import { after } from 'node:test';
import { pathToFileURL } from 'node:url';
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { WebSocket as WS } from 'ws';
import { createServer, type Perihelion, type ServerOptions } from '@perihelion/server';
import { Client, type ClientOptions } from '../src/index.js';

export interface TestServer {
  server: Perihelion;
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Open mode (clients may publish), no rate limits: protocol tests set their own policy. */
export async function startServer(options: ServerOptions = {}, port = 0): Promise<TestServer> {
  const server = createServer({ pingInterval: 0, open: true, handshakeRate: 0, drainTimeout: 0, ...options });
  const address = await server.listen({ port, host: '127.0.0.1' });
  return { server, url: `http://127.0.0.1:${address.port}${server.options.path}`, port: address.port, close: () => server.close() };
}

/**
 * The client's view of the network, which a test can cut and restore: requests in flight are
 * aborted and sockets dropped as a pulled cable would, and new ones fail until restored.
 */
export class Net {
  offline = false;
  /** HTTP requests made (batching tests count them). */
  requests = 0;
  /** Bodies of the HTTP requests made. */
  readonly bodies: string[] = [];
  private readonly aborts = new Set<AbortController>();
  private readonly sockets = new Set<WS>();

  readonly fetch: typeof fetch = (input, init = {}) => {
    if (this.offline) return Promise.reject(new TypeError('fetch failed: network is down'));
    this.requests++;
    if (typeof init.body === 'string') this.bodies.push(init.body);
    const abort = new AbortController();
    this.aborts.add(abort);
    const signal = init.signal ? AbortSignal.any([init.signal, abort.signal]) : abort.signal;
    const body = typeof init.body === 'string' ? init.body : '';
    const url = this.httpUrl && typeof input === 'string' ? this.httpUrl(input) : input;
    return fetch(url, { ...init, signal })
      .then(async (response) => {
        if (this.loseReply?.(body)) {
          // The request reached the server; its answer is lost on the way back.
          this.loseReply = undefined;
          await response.text();
          throw new TypeError('fetch failed: connection reset');
        }
        return response;
      })
      .finally(() => this.aborts.delete(abort));
  };

  /** WebSocket frames sent and received, as text (frame-counting tests read them). */
  readonly framesOut: string[] = [];
  readonly framesIn: string[] = [];

  /** When set, the answer to the next request whose body it accepts is lost (once). */
  loseReply: ((body: string) => boolean) | undefined;

  /** When set, called as each WebSocket is made (a test reads the client's view at that moment). */
  onWebSocket: (() => void) | undefined;

  /** When set, where each HTTP request goes instead (another node of a cluster, say). */
  httpUrl: ((url: string) => string) | undefined;

  /** When set, where each WebSocket goes instead (a proxy that swallows upgrades, say). */
  webSocketUrl: ((url: string) => string) | undefined;

  readonly WebSocket: new (url: string) => WebSocket;

  constructor() {
    const net = this;
    this.WebSocket = class extends WS {
      constructor(url: string) {
        // Port 1 refuses at once: a socket opened while the network is down fails.
        super(net.offline ? url.replace(/\/\/[^/]+/, '//127.0.0.1:1') : (net.webSocketUrl?.(url) ?? url));
        net.onWebSocket?.();
        net.sockets.add(this);
        this.on('close', () => net.sockets.delete(this));
        this.on('message', (data) => net.framesIn.push(String(data)));
      }

      override send(data: string, ...rest: unknown[]): void {
        net.framesOut.push(String(data));
        (WS.prototype.send as (...args: unknown[]) => void).call(this, data, ...rest);
      }
    } as unknown as new (url: string) => WebSocket;
  }

  cut(): void {
    this.offline = true;
    for (const abort of this.aborts) abort.abort(new TypeError('network is down'));
    for (const socket of this.sockets) socket.terminate();
  }

  restore(): void {
    this.offline = false;
  }

  options(): Pick<ClientOptions, 'fetch' | 'WebSocket'> {
    return { fetch: this.fetch, WebSocket: this.WebSocket };
  }
}

/**
 * Every client the tests made, disconnected once the file's tests are done: a test that fails half
 * way must not leave its client reconnecting for ever, which would keep the file's process from
 * ending. Not when this file is the one run: the runner runs it on its own too (every .js under a
 * test directory), and Node 20's never ends a file with a hook and no test under --test-force-exit.
 */
const made = new Set<Client>();
if (process.argv[1] === undefined || pathToFileURL(process.argv[1]).href !== import.meta.url) after(() => Promise.all([...made].map((c) => c.disconnect())));

/** A client for Node tests: fast reconnects, the given transports, the test's network. */
export function client(url: string, options: ClientOptions = {}, net = new Net()): Client {
  const c = new Client(url, { minReconnectDelay: 50, maxReconnectDelay: 300, ...net.options(), ...options });
  made.add(c);
  return c;
}

/** `what` names the wait in the error; a function is asked at the deadline, so that it can say what was reached by then. */
export async function waitFor(predicate: () => boolean, ms = 5000, what: string | (() => string) = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** One connection through the proxy: the client's side and the server's. */
interface Link {
  client: Socket;
  upstream: Socket;
  /** The request line of the last HTTP request the client sent on it ("GET /bayeux/… HTTP/1.1"). */
  request: string;
}

/**
 * A TCP proxy on loopback in front of a server, whose connections a test can cut as a network
 * would: with a FIN (`socket.end()`), with an RST (`socket.resetAndDestroy()`), or silently (no
 * byte forwarded any more either way and no close, as a NAT or a proxy that forgot them).
 * Connections opened after a cut pass again.
 */
export class TcpProxy {
  /** Connections opened so far. */
  opened = 0;
  private readonly links = new Set<Link>();
  private readonly silenced = new Set<Socket>();

  private constructor(private readonly server: NetServer) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    const server = createNetServer();
    const proxy = new TcpProxy(server);
    server.on('connection', (client) => proxy.accept(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** The URL of `path` (e.g. "/bayeux") through the proxy. */
  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  /** Connections forwarding now. */
  get size(): number {
    return this.links.size;
  }

  /** Until when new connections are refused (see outage). */
  private downUntil = 0;

  /**
   * The network goes down for `ms`: every connection is reset, and so is every new one until
   * then (a refused connection, as the client sees it); returns how many were cut.
   */
  outage(ms: number): number {
    this.downUntil = Date.now() + ms;
    return this.reset();
  }

  private accept(client: Socket, targetPort: number): void {
    if (Date.now() < this.downUntil) {
      client.resetAndDestroy();
      return;
    }
    this.opened++;
    const upstream = connect(targetPort, '127.0.0.1');
    const link: Link = { client, upstream, request: '' };
    this.links.add(link);
    client.on('data', (chunk: Buffer) => {
      const line = /^[A-Z]+ \S+ HTTP\/1\.1(?=\r\n)/.exec(chunk.toString('latin1', 0, 2048));
      if (line) link.request = line[0];
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const done = (): void => {
      this.links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on('error', done);
      socket.on('close', done);
    }
  }

  private detach({ client, upstream }: Link): void {
    client.unpipe(upstream);
    upstream.unpipe(client);
  }

  /** Cuts every connection with a FIN both ways; returns how many. */
  end(): number {
    const links = [...this.links];
    for (const link of links) {
      this.links.delete(link);
      this.detach(link);
      link.client.end();
      link.upstream.end();
      // A peer that never answers the FIN must not keep the socket.
      setTimeout(() => (link.client.destroy(), link.upstream.destroy()), 1000).unref();
    }
    return links.length;
  }

  /** Cuts every connection with an RST both ways; returns how many. */
  reset(): number {
    const links = [...this.links];
    for (const link of links) {
      this.links.delete(link);
      this.detach(link);
      link.client.resetAndDestroy();
      link.upstream.resetAndDestroy();
    }
    return links.length;
  }

  /**
   * Every connection (or those whose last request `which` picks) stops carrying anything, either
   * way, and stays open; returns how many.
   */
  silence(which: (request: string) => boolean = () => true): number {
    const links = [...this.links].filter((link) => which(link.request));
    for (const link of links) {
      this.links.delete(link);
      this.detach(link);
      for (const socket of [link.client, link.upstream]) {
        socket.pause();
        this.silenced.add(socket);
      }
    }
    return links.length;
  }

  async close(): Promise<void> {
    for (const { client, upstream } of this.links) client.destroy(), upstream.destroy();
    for (const socket of this.silenced) socket.destroy();
    this.links.clear();
    this.silenced.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * A minimal EventSource for Node 20 (which has none), over `fetch`, as the client expects one from
 * the environment: named events, `onmessage`, comments ignored, `onerror` when the stream fails or
 * ends. It does not reconnect by itself (the client closes a source that failed).
 */
export function eventSourceOver(fetchFn: typeof fetch): new (url: string, init?: EventSourceInit) => EventSource {
  return class NodeEventSource extends EventTarget {
    static readonly CONNECTING = 0;
    static readonly OPEN = 1;
    static readonly CLOSED = 2;
    readyState = 0;
    onopen: ((event: Event) => void) | null = null;
    onmessage: ((event: MessageEvent) => void) | null = null;
    onerror: ((event: Event) => void) | null = null;
    readonly withCredentials: boolean;
    private readonly abort = new AbortController();
    private readonly fetcher: typeof fetch | undefined;

    constructor(
      readonly url: string,
      init?: EventSourceInit & { fetch?: typeof fetch },
    ) {
      super();
      this.withCredentials = init?.withCredentials ?? false;
      this.fetcher = init?.fetch;
      void this.run().catch(() => this.fail());
    }

    private async run(): Promise<void> {
      // As the `eventsource` package: a fetch given in the init (to carry cookies) wins.
      const fetcher = this.fetcher ?? fetchFn;
      const response = await fetcher(this.url, { headers: { Accept: 'text/event-stream' }, signal: this.abort.signal, cache: 'no-store' });
      if (!response.ok || !response.body) {
        await response.body?.cancel();
        return this.fail();
      }
      this.readyState = 1;
      this.onopen?.(new Event('open'));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      let type = '';
      let data: string[] = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return this.fail();
        buffered += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buffered.search(/\r\n|\n|\r/)) !== -1) {
          const line = buffered.slice(0, end);
          buffered = buffered.slice(end + (buffered.startsWith('\r\n', end) ? 2 : 1));
          if (this.readyState === 2) return;
          if (line === '') {
            if (data.length > 0) this.dispatch(type || 'message', data.join('\n'));
            type = '';
            data = [];
          } else if (!line.startsWith(':')) {
            const colon = line.indexOf(':');
            const field = colon === -1 ? line : line.slice(0, colon);
            const text = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') type = text;
            else if (field === 'data') data.push(text);
          }
        }
      }
    }

    private dispatch(type: string, data: string): void {
      const event = new MessageEvent(type, { data });
      if (type === 'message') this.onmessage?.(event);
      this.dispatchEvent(event);
    }

    private fail(): void {
      if (this.readyState === 2) return;
      this.readyState = 2;
      this.onerror?.(new Event('error'));
    }

    close(): void {
      this.readyState = 2;
      this.abort.abort();
    }
  } as unknown as new (url: string, init?: EventSourceInit) => EventSource;
}

/** Fails with a clear message when no Redis answers on 127.0.0.1:6379 (the tests that use the Redis engine). */
export function requireRedis(): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port: 6379 }, () => socket.write('PING\r\n'));
    const fail = (why: string): void => {
      socket.destroy();
      reject(new Error(`this test needs a Redis server at 127.0.0.1:6379 (start one with "redis-server --daemonize yes"): ${why}`));
    };
    socket.setTimeout(2000, () => fail('no answer'));
    socket.once('error', (error) => fail(error.message));
    socket.once('data', (data) => {
      socket.destroy();
      if (data.toString().startsWith('+PONG')) resolve();
      else fail(`it answered ${JSON.stringify(data.toString())}`);
    });
  });
}
