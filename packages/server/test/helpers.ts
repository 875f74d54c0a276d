/** Shared test helpers: a real server on a free loopback port, and a raw Bayeux HTTP client. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createHttpServer, request } from 'node:http';
import { WebSocket } from 'ws';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { parseError, type ParsedError } from '@perihelion/protocol';
import { randomBytes } from 'node:crypto';
import { RedisEngine, createServer, type Perihelion, type ServerOptions } from '../src/index.js';
import type { ServerCore } from '../src/core/server.js';
import type { ServerSession } from '../src/core/session.js';
import { deleteKeys } from './redis-fixture.js';

export interface TestServer {
  server: Perihelion;
  /** http://127.0.0.1:<port><path> */
  url: string;
  /** ws://127.0.0.1:<port><path> */
  wsUrl: string;
  address: AddressInfo;
  close(): Promise<void>;
}

/**
 * A server for protocol tests: open mode (clients may publish anywhere) unless the test says
 * otherwise; security tests configure their own policy.
 */
export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  // Hundreds of handshakes from 127.0.0.1 in seconds are normal here; rate tests set their own limits.
  // PERIHELION_TEST_ENGINE=redis runs the protocol tests over the Redis engine (a prefix of their own).
  const engine = options.engine ?? (process.env.PERIHELION_TEST_ENGINE === 'redis' ? new RedisEngine({ url: process.env.PERIHELION_TEST_REDIS ?? 'redis://127.0.0.1:6379', prefix: `perihelion-test:helpers:${randomBytes(6).toString('hex')}:` }) : undefined);
  const server = createServer({ pingInterval: 0, open: true, handshakeRate: 0, drainTimeout: 0, ...options, ...(engine ? { engine } : {}) });
  const address = await server.listen({ port: 0, host: '127.0.0.1' });
  const base = `127.0.0.1:${address.port}${server.options.path}`;
  const close = async (): Promise<void> => {
    await server.close();
    if (engine instanceof RedisEngine && !options.engine) await deleteKeys(engine.options.prefix);
  };
  return { server, url: `http://${base}`, wsUrl: `ws://${base}`, address, close };
}

/**
 * A server that allows one WebSocket per address, with that one already taken by a socket of
 * this address: any client of this machine is refused its WebSocket (429) and must fall back.
 * `release` closes the held socket and the server.
 */
export async function serverWithItsWebsocketTaken(): Promise<{ test: TestServer; release: () => Promise<void> }> {
  const test = await startServer({ maxWebsocketsPerIp: 1 });
  const held = new WebSocket(test.wsUrl);
  await once(held, 'open');
  return {
    test,
    release: async () => {
      held.close();
      await test.close();
    },
  };
}

/**
 * The server's own record of a session (its queue, held connect and push line), for tests that
 * watch those internals: applications see the narrower `Session`.
 */
export function sessionRecord(server: Perihelion, clientId: string): ServerSession | undefined {
  return server.getSession(clientId) as ServerSession | undefined;
}

/** The core a server holds (a private field), for tests that watch its internals. */
export function coreOf(server: Perihelion): ServerCore {
  return (server as unknown as { core: ServerCore }).core;
}

export interface BayeuxResponse {
  status: number;
  body: Record<string, unknown>[];
  headers: Headers;
}

/**
 * A cookie jar for the raw HTTP clients of the tests, as a browser keeps one: sessions are bound
 * to the BAYEUX_BROWSER cookie of the browser that handshook them.
 */
const jar = new Map<string, Map<string, string>>();

/** The Cookie header the jar holds for `url`'s host, if any. */
export function cookieFor(url: string): string | undefined {
  const cookies = jar.get(new URL(url).host);
  return cookies && cookies.size > 0 ? [...cookies].map(([name, value]) => `${name}=${value}`).join('; ') : undefined;
}

/** Forgets every cookie: the next request comes from a "new browser". */
export function clearCookies(): void {
  jar.clear();
}

/** fetch() that sends and keeps cookies like a browser. */
export async function browserFetch(url: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const cookie = cookieFor(url);
  if (cookie !== undefined && !headers.has('Cookie')) headers.set('Cookie', cookie);
  const response = await fetch(url, { ...init, headers });
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const [name, value] = (pair ?? '').split('=', 2);
    if (!name || value === undefined) continue;
    const host = new URL(url).host;
    if (!jar.has(host)) jar.set(host, new Map());
    jar.get(host)!.set(name.trim(), value.trim());
  }
  return response;
}

/** POSTs a batch as JSON (or a raw string body) and parses the JSON array that comes back. */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<BayeuxResponse> {
  const response = await browserFetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: JSON.parse(text) as Record<string, unknown>[], headers: response.headers };
}

/** Handshakes over long-polling and returns the clientId. */
export async function handshake(url: string, types: string[] = ['long-polling']): Promise<string> {
  const { body } = await post(url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: types, id: 'h' }]);
  const clientId = body[0]?.clientId;
  if (typeof clientId !== 'string') throw new Error(`handshake failed: ${JSON.stringify(body)}`);
  return clientId;
}

/**
 * Reads a streamed response body as text in the background, handing each decoded chunk to
 * `onText`; `onEnd` runs when the body ends or the request is aborted.
 */
export function readText(body: ReadableStream<Uint8Array>, onText: (text: string) => void, onEnd: () => void = () => {}): void {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        onText(decoder.decode(value, { stream: true }));
      }
    } catch {
      // aborted by the test
    }
    onEnd();
  })();
}

/** Resolves when `predicate` holds, polling every 10 ms, or rejects after `ms`. */
export async function waitFor(predicate: () => boolean, ms = 5000, what: string | (() => string) = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    // A function describes the state at the timeout, not at the start.
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** One reply of a batch, failing the test when it is missing. */
export function at<T>(body: T[], index: number): T {
  const message = body[index];
  assert.ok(message, `reply ${index} missing from ${JSON.stringify(body)}`);
  return message;
}

/** The parts of a Bayeux error string, failing the test when it does not follow `code:args:message`. */
export function errorOf(message: { error?: unknown }): ParsedError {
  assert.equal(typeof message.error, 'string', `no error in ${JSON.stringify(message)}`);
  const parsed = parseError(message.error as string);
  assert.ok(parsed, `error ${JSON.stringify(message.error)} does not follow code:args:message`);
  return parsed;
}

export type Msg = Record<string, unknown>;

/** A raw Bayeux WebSocket client that collects every message of every frame it receives. */
export class WsPeer {
  readonly received: Msg[] = [];
  readonly frames: unknown[] = [];
  closeCode: number | null = null;
  private nextId = 0;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const value = JSON.parse(String(data)) as unknown;
      this.frames.push(value);
      if (Array.isArray(value)) this.received.push(...(value as Msg[]));
    });
    ws.on('close', (code) => (this.closeCode = code));
    ws.on('error', () => {});
  }

  static async open(url: string): Promise<WsPeer> {
    // Like a browser, the upgrade carries the cookies of the host (session binding).
    const cookie = cookieFor(url.replace(/^ws/, 'http'));
    const ws = new WebSocket(url, cookie !== undefined ? { headers: { Cookie: cookie } } : {});
    const peer = new WsPeer(ws);
    await once(ws, 'open');
    return peer;
  }

  send(value: unknown): void {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }

  /** Sends one message with a fresh id and resolves to the reply carrying that id. */
  async request(message: Msg, ms = 3000): Promise<Msg> {
    const id = `w${++this.nextId}`;
    this.send([{ ...message, id }]);
    return this.next((m) => m.id === id, `a reply to ${JSON.stringify(message)}`, ms);
  }

  async next(predicate: (m: Msg) => boolean, what: string, ms = 3000): Promise<Msg> {
    await waitFor(() => this.received.some(predicate), ms, what);
    return this.received.find(predicate)!;
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const closed = once(this.ws, 'close');
    this.ws.close();
    await closed;
  }
}

/** A raw HTTP POST: the headers and the body bytes exactly as sent (no decoding, no gunzip). */
export function postForBytes(url: string, body: unknown, headers: Record<string, string>): Promise<{ headers: Record<string, unknown>; bytes: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ headers: res.headers, bytes: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/**
 * A reverse proxy that passes HTTP requests to `target` and swallows WebSocket upgrades: it takes
 * them and never answers, as some corporate proxies and old load balancers do.
 */
export async function upgradeSwallowingProxy(target: URL): Promise<{ url: string; swallowed: () => number; close: () => Promise<void> }> {
  const sockets = new Set<Duplex>();
  let swallowed = 0;
  const proxy = createHttpServer((req, res) => {
    const upstream = request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  proxy.on('upgrade', (_req, socket: Duplex) => {
    swallowed++;
    sockets.add(socket);
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  const { port } = proxy.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${target.pathname}`,
    swallowed: () => swallowed,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      proxy.closeAllConnections();
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    },
  };
}

/** A free TCP port on the loopback (for a process that must be told its port). */
export async function freePort(): Promise<number> {
  const probe = createHttpServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** A test server reached through `upgradeSwallowingProxy`; `close` stops both. */
export async function serverBehindSwallowingProxy(): Promise<{ test: TestServer; proxy: Awaited<ReturnType<typeof upgradeSwallowingProxy>>; close: () => Promise<void> }> {
  const test = await startServer();
  const proxy = await upgradeSwallowingProxy(new URL(test.url));
  return {
    test,
    proxy,
    close: async () => {
      await proxy.close();
      await test.close();
    },
  };
}

/**
 * Watches the event loop: `longest()` is its longest stall since the watch began (or was reset),
 * in ms, as seen by a timer every `everyMs`; `stop()` ends the watch.
 */
export function watchStalls(everyMs = 5): { longest(): number; reset(): void; stop(): void } {
  let longest = 0;
  let last = performance.now();
  const tick = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, everyMs);
  return {
    longest: () => longest,
    reset: () => {
      longest = 0;
      last = performance.now();
    },
    stop: () => clearInterval(tick),
  };
}
