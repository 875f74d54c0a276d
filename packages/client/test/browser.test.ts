/**
 * The client in a real browser (Debian's Chromium via playwright-core), loaded the way a page
 * loads it: `<script src="/bayeux/client.js">`, served by the server itself.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { createServer, type Perihelion, type ServerOptions } from '@perihelion/server';
import { waitFor } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** The five lines of the README, plus a place for the test to look. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>client</title>
<script src="/bayeux/client.js"></script>
<script>
  window.seen = [];
  window.states = [];
  window.start = (options) => {
    window.client = new Perihelion.Client('/bayeux', options);
    client.on('state', (change) => states.push(change.state + ':' + (change.transport || '')));
    return client.subscribe('/page/news', (data) => seen.push(data)).then(() => client.transport);
  };
</script>`;

interface Window {
  seen: unknown[];
  states: string[];
  start(options?: Record<string, unknown>): Promise<string>;
  client: { clientId: string | undefined; state: string; transport: string; publish(channel: string, data: unknown): Promise<unknown> };
}

describe('client in Chromium', () => {
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

  async function serve(options: ServerOptions = {}): Promise<{ server: Perihelion; origin: string }> {
    const server = createServer({ open: true, pingInterval: 0, drainTimeout: 0, handshakeRate: 0, ...options });
    const address = await server.listen({
      port: 0,
      host: '127.0.0.1',
      fallback: (req, res) => {
        if ((req.url ?? '/').split('?')[0] === '/') res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PAGE);
        else res.writeHead(404).end();
      },
    });
    return { server, origin: `http://127.0.0.1:${address.port}` };
  }

  async function open(context: BrowserContext, origin: string): Promise<Page> {
    const page = await context.newPage();
    page.on('pageerror', (error) => assert.fail(`page error: ${error.message}`));
    await page.goto(`${origin}/`);
    return page;
  }

  const seen = (page: Page): Promise<unknown[]> => page.evaluate(() => (window as unknown as Window).seen);

  /** Publishes until the page has seen `count` messages in all (subscriptions may still be settling on the server). */
  async function publishUntilSeen(server: Perihelion, page: Page, count: number, label: string): Promise<void> {
    for (let i = 0; i < 60; i++) {
      await server.publish('/page/news', `${label} ${i}`);
      if ((await seen(page)).length >= count) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.fail(`the page never saw ${count} messages (${label})`);
  }

  it('a page with one script tag subscribes, receives and publishes over WebSocket', async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const page = await open(context, origin);
      assert.equal(await page.evaluate(() => (window as unknown as Window).start()), 'websocket');
      await server.publish('/page/news', 'hello page');
      await page.waitForFunction(() => (window as unknown as Window).seen.length === 1);
      assert.deepEqual(await seen(page), ['hello page']);
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      await page.evaluate(() => (window as unknown as Window).client.publish('/page/up', { from: 'page' }));
      await waitFor(() => heard.length === 1, 3000, 'the page’s publish');
      assert.deepEqual(heard, [{ from: 'page' }]);
    } finally {
      await context.close();
      await server.close();
    }
  });

  it('uses Server-Sent Events when asked to', async () => {
    const { server, origin } = await serve({ heartbeat: 1000 });
    const context = await browser.newContext();
    try {
      const page = await open(context, origin);
      assert.equal(await page.evaluate(() => (window as unknown as Window).start({ transports: ['eventsource', 'long-polling'] })), 'eventsource');
      await publishUntilSeen(server, page, 2, 'sse');
      assert.equal(server.stats().sessionsByTransport.eventsource, 1);
    } finally {
      await context.close();
      await server.close();
    }
  });

  it('ten tabs of one origin share one server session; when the holder closes another tab takes over', async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const pages: Page[] = [];
      for (let i = 0; i < 10; i++) {
        const page = await open(context, origin);
        await page.evaluate(() => (window as unknown as Window).start());
        pages.push(page);
      }
      assert.equal(server.stats().sessions, 1, 'one session for ten tabs');
      await server.publish('/page/news', 'to every tab');
      for (const page of pages) await page.waitForFunction(() => (window as unknown as Window).seen.includes('to every tab'));
      // A tab that is not the holder publishes through the holder.
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      await pages[5]!.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'from tab 6'));
      await waitFor(() => heard.length === 1, 3000, 'the relayed publish');
      const clientIdOf = (page: Page): Promise<string | undefined> => page.evaluate(() => (window as unknown as Window).client.clientId);
      const first = await clientIdOf(pages[9]!);
      assert.equal(first, await clientIdOf(pages[0]!), 'every tab reports the one session');
      // Close the first tab: it was the first to ask for the lock, so it holds the connection.
      await pages[0]!.close();
      const rest = pages.slice(1);
      await waitFor(() => server.getSession(first!) === undefined, 15_000, 'the old session to end');
      for (const page of rest) await page.waitForFunction((old) => { const id = (window as unknown as Window).client.clientId; return id !== undefined && id !== old; }, first, { timeout: 10_000 });
      for (let i = 0; i < 60; i++) {
        await server.publish('/page/news', `after takeover ${i}`);
        const counts = await Promise.all(rest.map((page) => page.evaluate(() => (window as unknown as Window).seen.filter((s) => String(s).startsWith('after takeover')).length)));
        if (counts.every((n) => n > 0)) break;
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
      for (const page of rest) {
        const after = await page.evaluate(() => (window as unknown as Window).seen.filter((s) => String(s).startsWith('after takeover')).length);
        assert.ok(after > 0, 'every remaining tab receives after the takeover');
      }
      // The old session ends (swept), the new one serves all nine tabs.
      await waitFor(() => server.stats().sessions === 1, 15_000, 'one session again');
    } finally {
      await context.close();
      await server.close();
    }
  });

  it('a tab that goes away takes its subscriptions with it; the others keep theirs', async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const leader = await open(context, origin);
      await leader.evaluate(() => (window as unknown as Window).start());
      const other = await open(context, origin);
      await other.evaluate(() => (window as unknown as Window).start());
      await other.evaluate(() => (window as unknown as { client: { subscribe(p: string, h: () => void): Promise<unknown> } }).client.subscribe('/only/other', () => {}));
      const session = server.getSession((await leader.evaluate(() => (window as unknown as Window).client.clientId))!)!;
      assert.deepEqual([...session.subscriptions].sort(), ['/only/other', '/page/news']);
      // Both tabs want /page/news, only the closing one /only/other.
      await other.close();
      await waitFor(() => !session.subscriptions.has('/only/other'), 5000, 'the departed tab’s subscription to end');
      assert.deepEqual([...session.subscriptions], ['/page/news']);
    } finally {
      await context.close();
      await server.close();
    }
  });

  for (const transports of [undefined, ['long-polling']] as const) {
    it(`resubscribes by itself after the network drops and comes back (${transports ? transports[0] : 'default transports'})`, async () => {
      // Sessions expire a second after their line goes: the page must handshake and subscribe again.
      const { server, origin } = await serve({ maxInterval: 1000, timeout: 3000 });
      const context = await browser.newContext();
      try {
        const page = await open(context, origin);
        await page.evaluate((t) => (window as unknown as Window).start({ shared: false, minReconnectDelay: 100, maxReconnectDelay: 1000, ...(t ? { transports: t } : {}) }), transports);
        await publishUntilSeen(server, page, 1, 'before');
        const first = await page.evaluate(() => (window as unknown as Window).client.clientId);
        await context.setOffline(true);
        await page.waitForFunction(() => (window as unknown as Window).client.state === 'connecting', undefined, { timeout: 10_000 });
        await waitFor(() => server.getSession(first!) === undefined, 10_000, 'the old session to expire');
        await context.setOffline(false);
        await page.waitForFunction(() => (window as unknown as Window).client.state === 'connected', undefined, { timeout: 15_000 });
        const before = (await seen(page)).length;
        await publishUntilSeen(server, page, before + 1, 'after');
        assert.notEqual(await page.evaluate(() => (window as unknown as Window).client.clientId), first, 'a new session');
      } finally {
        await context.close();
        await server.close();
      }
    });
  }

  it('uses callback-polling (JSONP) when asked to', async () => {
    const { server, origin } = await serve({ jsonp: true, transports: ['websocket', 'long-polling', 'callback-polling'] });
    const context = await browser.newContext();
    try {
      const page = await open(context, origin);
      assert.equal(await page.evaluate(() => (window as unknown as Window).start({ transports: ['callback-polling'], shared: false })), 'callback-polling');
      await publishUntilSeen(server, page, 2, 'jsonp');
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      await page.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'by script tag'));
      await waitFor(() => heard.length === 1, 3000, 'the JSONP publish');
      assert.equal(server.stats().sessionsByTransport['callback-polling'], 1);
    } finally {
      await context.close();
      await server.close();
    }
  });

  it('a page on another origin, without CORS or WebSocket allowed, falls back to callback-polling by itself', async () => {
    // The server allows no other origin: its WebSocket upgrade answers 403 and POSTs fail CORS.
    const { server, origin } = await serve({ jsonp: true, transports: ['websocket', 'long-polling', 'callback-polling'] });
    const other = createHttpServer((_req, res) => res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PAGE.replace('/bayeux/client.js', `${origin}/bayeux/client.js`)));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`http://127.0.0.1:${(other.address() as AddressInfo).port}/`);
      const transport = await page.evaluate((url) => {
        type PageClient = Window['client'] & { subscribe(pattern: string, handler: (data: unknown) => void): Promise<unknown> };
        const w = window as unknown as Window & { Perihelion: { Client: new (url: string, options: object) => PageClient } };
        const c = new w.Perihelion.Client(url, { shared: false, minReconnectDelay: 50 });
        w.client = c;
        return c.subscribe('/page/news', (data) => w.seen.push(data)).then(() => c.transport);
      }, `${origin}/bayeux`);
      assert.equal(transport, 'callback-polling');
      await publishUntilSeen(server, page, 1, 'cross-origin');
    } finally {
      await context.close();
      other.close();
      await server.close();
    }
  });

  for (const [offered, expected] of [
    [undefined, 'eventsource'],
    [['websocket', 'long-polling'], 'long-polling'],
  ] as const) {
    it(`falls back to ${expected} when WebSocket is blocked`, async () => {
      const { server, origin } = await serve({ heartbeat: 1000, ...(offered ? { transports: [...offered] } : {}) });
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        // Every WebSocket to the server is cut as soon as it opens, as a proxy that drops them would.
        let attempts = 0;
        await page.routeWebSocket(/\/bayeux/, (ws) => {
          attempts++;
          ws.close({ code: 1011, reason: 'blocked' });
        });
        await page.goto(`${origin}/`);
        assert.equal(await page.evaluate(() => (window as unknown as Window).start({ shared: false })), expected);
        assert.ok(attempts >= 1, 'a WebSocket was tried first');
        await publishUntilSeen(server, page, 1, 'fallback');
        assert.equal(server.stats().sessionsByTransport[expected], 1);
      } finally {
        await context.close();
        await server.close();
      }
    });
  }
});
