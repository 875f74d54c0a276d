/** Shared test helpers: a real server on a free loopback port, and a raw Bayeux HTTP client. */
import type { AddressInfo } from 'node:net';
import { createServer, type Perihelion, type ServerOptions } from '../src/index.js';

export interface TestServer {
  server: Perihelion;
  /** http://127.0.0.1:<port><path> */
  url: string;
  /** ws://127.0.0.1:<port><path> */
  wsUrl: string;
  address: AddressInfo;
  close(): Promise<void>;
}

export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  const server = createServer({ pingInterval: 0, ...options });
  const address = await server.listen({ port: 0, host: '127.0.0.1' });
  const base = `127.0.0.1:${address.port}${server.options.path}`;
  return { server, url: `http://${base}`, wsUrl: `ws://${base}`, address, close: () => server.close() };
}

export interface BayeuxResponse {
  status: number;
  body: Record<string, unknown>[];
  headers: Headers;
}

/** POSTs a batch as JSON (or a raw string body) and parses the JSON array that comes back. */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<BayeuxResponse> {
  const response = await fetch(url, {
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

/** Resolves when `predicate` holds, polling every 10 ms, or rejects after `ms`. */
export async function waitFor(predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
