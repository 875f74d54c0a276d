/**
 * The `BAYEUX_BROWSER` cookie behind a proxy that serves the endpoint under another path
 * (`/realtime/bayeux` outside, `/bayeux` on the server), in a real browser (Debian's Chromium via
 * playwright-core): with its Path the mount path, the browser never sends it back, and a session
 * bound strictly to its browser is refused its second request; `cookiePath` set to the outside
 * path mends it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer as createHttpServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser } from 'playwright-core';
import { createServer, type ServerOptions } from '../src/index.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** A reverse proxy that takes `/realtime/…` to the upstream's `/…`, as an ingress with a rewrite does. */
async function rewritingProxy(upstreamPort: number): Promise<Server> {
  const proxy = createHttpServer((req, res) => {
    const url = req.url ?? '/';
    if (!url.startsWith('/realtime/')) return void res.writeHead(404).end();
    const upstream = request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: url.slice('/realtime'.length), headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.writeHead(502).end());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return proxy;
}

describe('the browser cookie behind a path-rewriting proxy, in Chromium', () => {
  let browser: Browser;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
  });

  /** A page behind the proxy handshakes, then subscribes: the cookie set and the subscribe's answer. */
  async function handshakeAndSubscribe(options: ServerOptions): Promise<{ subscribe: { successful: boolean; error?: string } }> {
    const server = createServer({ open: true, sessionBinding: 'strict', drainTimeout: 0, ...options });
    const { port } = await server.listen({ port: 0, host: '127.0.0.1', fallback: (_req, res) => void res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>t</title>') });
    const proxy = await rewritingProxy(port);
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`http://127.0.0.1:${(proxy.address() as AddressInfo).port}/realtime/`);
      return await page.evaluate(async () => {
        const post = async (message: object): Promise<{ reply: { successful: boolean; clientId?: string; error?: string } }> => {
          const response = await fetch('/realtime/bayeux', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([message]) });
          return { reply: ((await response.json()) as Array<{ successful: boolean; clientId?: string; error?: string }>)[0]! };
        };
        const handshake = await post({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] });
        const subscribe = await post({ channel: '/meta/subscribe', clientId: handshake.reply.clientId, subscription: '/rewritten' });
        return { subscribe: subscribe.reply };
      });
    } finally {
      await context.close();
      await new Promise((resolve) => proxy.close(resolve));
      await server.close();
    }
  }

  it('with the mount path as the cookie\'s Path, the browser keeps the cookie from the session it bound (402)', async () => {
    const { subscribe } = await handshakeAndSubscribe({});
    assert.equal(subscribe.successful, false);
    assert.match(String(subscribe.error), /^402:/);
  });

  it('with cookiePath the outside path, the session goes on', async () => {
    const { subscribe } = await handshakeAndSubscribe({ cookiePath: '/realtime/bayeux' });
    assert.equal(subscribe.successful, true, JSON.stringify(subscribe));
  });

  it('with cookiePath "/", too', async () => {
    const { subscribe } = await handshakeAndSubscribe({ cookiePath: '/' });
    assert.equal(subscribe.successful, true, JSON.stringify(subscribe));
  });
});

describe('cookiePath', () => {
  it('sets the Path of the cookie, and is checked as a path', async () => {
    const server = createServer({ cookiePath: '/realtime/bayeux/', drainTimeout: 0 });
    const { port } = await server.listen({ port: 0, host: '127.0.0.1' });
    try {
      const response = await fetch(`http://127.0.0.1:${port}/bayeux`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
      assert.match(response.headers.get('set-cookie') ?? '', /^BAYEUX_BROWSER=[A-Za-z0-9_-]{16,}; Path=\/realtime\/bayeux; HttpOnly$/);
    } finally {
      await server.close();
    }
    for (const bad of ['realtime', '/a b', '//x', '', 7]) {
      assert.throws(() => createServer({ cookiePath: bad as string }), /option "cookiePath" must be a URL path starting with "\/"/, String(bad));
    }
  });
});
