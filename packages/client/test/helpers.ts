/** Test helpers: a real Perihelion server on a loopback port, and a network the test can cut. */
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
    return fetch(input, { ...init, signal })
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

  /** When set, the answer to the next request whose body it accepts is lost (once). */
  loseReply: ((body: string) => boolean) | undefined;

  readonly WebSocket: new (url: string) => WebSocket;

  constructor() {
    const net = this;
    this.WebSocket = class extends WS {
      constructor(url: string) {
        // Port 1 refuses at once: a socket opened while the network is down fails.
        super(net.offline ? url.replace(/\/\/[^/]+/, '//127.0.0.1:1') : url);
        net.sockets.add(this);
        this.on('close', () => net.sockets.delete(this));
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

/** A client for Node tests: fast reconnects, the given transports, the test's network. */
export function client(url: string, options: ClientOptions = {}, net = new Net()): Client {
  return new Client(url, { minReconnectDelay: 50, maxReconnectDelay: 300, ...net.options(), ...options });
}

export async function waitFor(predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
