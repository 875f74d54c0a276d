/**
 * The client in a real browser (Debian's Chromium via playwright-core), loaded the way a page
 * loads it: `<script src="/bayeux/client.js">`, served by the server itself.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { WebSocket as WS } from 'ws';
import { createServer, type Perihelion, type ServerOptions } from '@perihelion/server';
import { waitFor } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** The five lines of the README, plus a place for the test to look. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>client</title>
<script src="/bayeux/client.js"></script>
<script>
  window.seen = [];
  window.states = [];
  window.moves = [];
  window.start = (options) => {
    window.client = new Perihelion.Client('/bayeux', options);
    client.on('state', (change) => states.push(change.state + ':' + (change.transport || '')));
    client.on('transport', (change) => moves.push(change.previous + '>' + change.transport));
    return client.subscribe('/page/news', (data) => seen.push(data)).then(() => client.transport);
  };
</script>`;

/** A page following the state channel /list through a replica (the server's state.js). */
const STATE_PAGE = `<!doctype html><meta charset="utf-8"><title>state</title>
<script src="/bayeux/client.js"></script>
<script src="/bayeux/state.js"></script>
<script>
  window.causes = [];
  window.follow = (options) => {
    window.client = new Perihelion.Client('/bayeux', options);
    return PerihelionState.replicate(client, '/list').then((replica) => {
      window.replica = replica;
      replica.onChange((change) => causes.push(change.cause));
      return client.sharing;
    });
  };
  window.append = (label, count) => {
    const proposals = [];
    for (let i = 0; i < count; i++) proposals.push(replica.propose((draft) => { draft.push({ id: label + '-' + i }); }));
    return Promise.all(proposals);
  };
  window.view = () => JSON.stringify({ version: replica.version, pending: replica.pendingCount, value: replica.value });
</script>`;

interface Window {
  seen: unknown[];
  states: string[];
  /** The client's transport events, "previous>transport". */
  moves: string[];
  start(options?: Record<string, unknown>): Promise<string>;
  client: { clientId: string | undefined; state: string; transport: string; sharing: string; publish(channel: string, data: unknown): Promise<unknown> };
}

describe('client in Chromium', () => {
  let browser: Browser;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ARGS,
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
        const path = (req.url ?? '/').split('?')[0];
        if (path === '/' || path === '/state') res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(path === '/' ? PAGE : STATE_PAGE);
        else res.writeHead(404).end();
      },
    });
    return { server, origin: `http://127.0.0.1:${address.port}` };
  }

  async function open(context: BrowserContext, origin: string, path = '/'): Promise<Page> {
    const page = await context.newPage();
    page.on('pageerror', (error) => assert.fail(`page error: ${error.message}`));
    await page.goto(`${origin}${path}`);
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

  /** Opens `count` tabs, each subscribing to /page/news with `options`; returns them once all are connected. */
  async function tabs(context: BrowserContext, origin: string, count: number, options: Record<string, unknown>): Promise<Page[]> {
    const pages: Page[] = [];
    for (let i = 0; i < count; i++) {
      const page = await open(context, origin);
      await page.evaluate((o) => (window as unknown as Window).start(o), options);
      pages.push(page);
    }
    return pages;
  }

  const clientIdOf = (page: Page): Promise<string | undefined> => page.evaluate(() => (window as unknown as Window).client.clientId);
  const sharingOf = (page: Page): Promise<string> => page.evaluate(() => (window as unknown as { client: { sharing: string } }).client.sharing);

  /** Publishes until every page has seen a message starting with `label`. */
  async function publishUntilAllSeen(server: Perihelion, pages: Page[], label: string): Promise<void> {
    const counts = (): Promise<number[]> => Promise.all(pages.map((page) => page.evaluate((l) => (window as unknown as Window).seen.filter((s) => String(s).startsWith(l)).length, label)));
    for (let i = 0; i < 60; i++) {
      await server.publish('/page/news', `${label} ${i}`);
      if ((await counts()).every((n) => n > 0)) return;
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
    assert.fail(`not every tab saw "${label}": ${(await counts()).join(', ')}`);
  }

  it('ten tabs of one origin share one server session held by a SharedWorker, which outlives any tab', async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const pages = await tabs(context, origin, 10, {});
      for (const page of pages) assert.equal(await sharingOf(page), 'worker');
      assert.equal(server.stats().sessions, 1, 'one session for ten tabs');
      const first = await clientIdOf(pages[0]!);
      assert.equal(await clientIdOf(pages[9]!), first, 'every tab reports the one session');
      await server.publish('/page/news', 'to every tab');
      for (const page of pages) await page.waitForFunction(() => (window as unknown as Window).seen.includes('to every tab'));
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      await pages[5]!.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'from tab 6'));
      await waitFor(() => heard.length === 1, 3000, 'the publish through the worker');
      // The first tab goes: the worker, and so the session, stay for the others.
      await pages[0]!.close();
      await publishUntilAllSeen(server, pages.slice(1), 'after the first tab left');
      assert.equal(server.stats().sessions, 1);
      assert.ok(server.getSession(first!), 'the same session');
    } finally {
      await context.close();
      await server.close();
    }
  });

  it('without SharedWorker, ten tabs elect a leader that holds the one session; when it closes another tab takes over', async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const pages = await tabs(context, origin, 10, { worker: false });
      assert.equal(await sharingOf(pages[0]!), 'leader', 'the first tab got the lock');
      for (const page of pages.slice(1)) assert.equal(await sharingOf(page), 'follower');
      assert.equal(server.stats().sessions, 1, 'one session for ten tabs');
      await server.publish('/page/news', 'to every tab');
      for (const page of pages) await page.waitForFunction(() => (window as unknown as Window).seen.includes('to every tab'));
      // A tab that is not the leader publishes through the leader.
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      await pages[5]!.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'from tab 6'));
      await waitFor(() => heard.length === 1, 3000, 'the relayed publish');
      const first = await clientIdOf(pages[9]!);
      assert.equal(first, await clientIdOf(pages[0]!), 'every tab reports the one session');
      await pages[0]!.close();
      const rest = pages.slice(1);
      // Published while the connection changes hands: the new leader recovers them from the
      // positions the tabs were relayed.
      const during = ['during takeover 1', 'during takeover 2', 'during takeover 3'];
      for (const text of during) await server.publish('/page/news', text);
      // The leader ends its session as it leaves; the next tab in the lock's queue opens a new one.
      await waitFor(() => server.getSession(first!) === undefined, 15_000, 'the old session to end');
      for (const page of rest) await page.waitForFunction((old) => { const id = (window as unknown as Window).client.clientId; return id !== undefined && id !== old; }, first, { timeout: 10_000 });
      assert.equal(await sharingOf(pages[1]!), 'leader');
      await publishUntilAllSeen(server, rest, 'after takeover');
      for (const page of rest) {
        const seen = await page.evaluate(() => (window as unknown as Window).seen.filter((s) => String(s).startsWith('during takeover')));
        assert.deepEqual(seen, during, 'every message of the handover, once, in order, in every tab');
      }
      await waitFor(() => server.stats().sessions === 1, 15_000, 'one session again');
    } finally {
      await context.close();
      await server.close();
    }
  });

  for (const options of [{}, { worker: false }]) {
  it(`a tab that goes away takes its subscriptions with it; the others keep theirs (${JSON.stringify(options)})`, async () => {
    const { server, origin } = await serve();
    const context = await browser.newContext();
    try {
      const [leader, other] = (await tabs(context, origin, 2, options)) as [Page, Page];
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
  }

  for (const [label, options, sharing] of [
    ['a SharedWorker', {}, 'worker'],
    ['a leader tab', { worker: false }, 'leader'],
  ] as const) {
    it(`replicas of a state channel in three tabs sharing one session through ${label} propose at once and converge, also after the first tab closes`, async () => {
      const { server, origin } = await serve();
      const state = await server.state('/list', [] as Array<{ id: string }>, { validate: () => true });
      const context = await browser.newContext();
      try {
        const pages: Page[] = [];
        for (let i = 0; i < 3; i++) {
          const page = await open(context, origin, '/state');
          const mode = await page.evaluate((o) => (window as unknown as { follow(o: object): Promise<string> }).follow(o), options);
          if (i === 0) assert.equal(mode, sharing);
          pages.push(page);
        }
        assert.equal(server.stats().sessions, 1, 'one session for the three tabs');
        type StatePage = { append(label: string, count: number): Promise<number[]>; view(): string };
        const append = (page: Page, label: string): Promise<number[]> => page.evaluate((l) => (window as unknown as StatePage).append(l, 5), label);
        const views = (open: Page[]): Promise<Array<{ version: number; pending: number; value: unknown }>> =>
          Promise.all(open.map(async (page) => JSON.parse(await page.evaluate(() => (window as unknown as StatePage).view())) as { version: number; pending: number; value: unknown }));
        const converged = async (open: Page[], what: string): Promise<void> => {
          for (let i = 0; i < 100; i++) {
            const seen = await views(open);
            if (seen.every((v) => v.version === state.version && v.pending === 0 && JSON.stringify(v.value) === JSON.stringify(state.get()))) return;
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          assert.fail(`the tabs did not converge ${what}: server v${state.version}, tabs ${JSON.stringify((await views(open)).map((v) => [v.version, v.pending]))}`);
        };
        await Promise.all(pages.map((page, i) => append(page, `tab${i}`)));
        await state.update((draft) => void draft.push({ id: 'server' }));
        assert.equal(state.get().length, 16);
        await converged(pages, 'after the first round');
        // The first tab (the leader, without a SharedWorker) goes while the others are proposing.
        const rest = pages.slice(1);
        const again = Promise.all(rest.map((page, i) => append(page, `again${i}`)));
        await pages[0]!.close();
        await again;
        await state.update((draft) => void draft.push({ id: 'server again' }));
        assert.equal(state.get().length, 27);
        assert.equal(new Set(state.get().map((item) => item.id)).size, 27, 'every proposal applied once');
        await converged(rest, 'after the first tab closed');
      } finally {
        await context.close();
        await server.close();
      }
    });
  }

  it('tells the SharedWorker when the browser goes offline: it drops its line at once and comes back', async () => {
    // Playwright's offline emulation reaches pages, not shared workers: the worker learns it from the tabs.
    const { server, origin } = await serve({ timeout: 3000 });
    const context = await browser.newContext();
    try {
      const page = await open(context, origin);
      await page.evaluate(() => (window as unknown as Window).start({ minReconnectDelay: 100, maxReconnectDelay: 1000 }));
      assert.equal(await sharingOf(page), 'worker');
      await page.evaluate(() => {
        const w = window as unknown as { reasons: string[]; client: { on(event: string, listener: (change: { reason: string }) => void): void } };
        w.reasons = [];
        w.client.on('connecting', (change) => w.reasons.push(change.reason));
      });
      await context.setOffline(true);
      await page.waitForFunction(() => (window as unknown as { reasons: string[] }).reasons.includes('network: offline'), undefined, { timeout: 5000 });
      await context.setOffline(false);
      await page.waitForFunction(() => (window as unknown as Window).client.state === 'connected', undefined, { timeout: 10_000 });
      await publishUntilSeen(server, page, 1, 'after');
    } finally {
      await context.close();
      await server.close();
    }
  });

  for (const options of [{}, { worker: false }]) {
    it(`with cookies and site data blocked, where the browser refuses the locks, each tab connects alone (${JSON.stringify(options)})`, async () => {
      // A profile that blocks cookies (Chromium's "Block all cookies"): navigator.locks exists,
      // but every locks.request is rejected ("The request was denied.") and the worker fails.
      const profile = mkdtempSync(join(tmpdir(), 'perihelion-no-cookies-'));
      mkdirSync(join(profile, 'Default'));
      writeFileSync(join(profile, 'Default', 'Preferences'), JSON.stringify({ profile: { default_content_setting_values: { cookies: 2 } } }));
      const { server, origin } = await serve();
      const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, args: ARGS });
      try {
        const [page, other] = [await open(context, origin), await open(context, origin)];
        const refused = await page.evaluate(() => navigator.locks.request('probe', () => 'granted').catch((error: Error) => error.name));
        assert.equal(refused, 'SecurityError', 'the browser refuses the lock');
        for (const tab of [page, other]) {
          assert.equal(await tab.evaluate((o) => (window as unknown as Window).start(o), options), 'websocket');
          assert.equal(await sharingOf(tab), 'off');
        }
        assert.equal(server.stats().sessions, 2, 'a session per tab');
        await server.publish('/page/news', 'despite the blocked storage');
        for (const tab of [page, other]) await tab.waitForFunction(() => (window as unknown as Window).seen.includes('despite the blocked storage'));
        const heard: unknown[] = [];
        server.subscribe('/page/up', (message) => void heard.push(message.data));
        await other.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'from a tab alone'));
        await waitFor(() => heard.length === 1, 3000, 'the publish');
        assert.deepEqual(await page.evaluate(() => (window as unknown as Window).states), ['connecting:', 'connected:websocket']);
      } finally {
        await context.close();
        await server.close();
        rmSync(profile, { recursive: true, force: true });
      }
    });
  }

  for (const [label, extra] of [
    ['one tab, websocket', { shared: false }],
    ['one tab, long-polling', { shared: false, transports: ['long-polling'] }],
  ] as const) {
    it(`resubscribes by itself after the network drops and comes back (${label})`, async () => {
      // Sessions expire a second after their line goes: the page must handshake and subscribe again.
      const { server, origin } = await serve({ maxInterval: 1000, timeout: 3000 });
      const context = await browser.newContext();
      try {
        const page = await open(context, origin);
        await page.evaluate((o) => (window as unknown as Window).start({ minReconnectDelay: 100, maxReconnectDelay: 1000, ...o }), extra);
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

  it('callback-polling keeps each URL within 8 000 characters: a batch past it goes in several requests, and a message that cannot fit is refused (413) while the line goes on', async () => {
    const { server, origin } = await serve({ jsonp: true, transports: ['websocket', 'long-polling', 'callback-polling'] });
    const context = await browser.newContext();
    try {
      const page = await open(context, origin);
      const urls: number[] = [];
      page.on('request', (request) => void (request.url().includes('jsonp=') && urls.push(request.url().length)));
      assert.equal(await page.evaluate(() => (window as unknown as Window).start({ transports: ['callback-polling'], shared: false })), 'callback-polling');
      const heard: unknown[] = [];
      server.subscribe('/page/up', (message) => void heard.push(message.data));
      // 30 messages of 600 characters in one turn (about 20 000 characters of URL in all), and one
      // that no URL a proxy takes could carry: before, its request failed (HTTP 431, no script),
      // the line was taken for lost and the message sent again, for ever.
      const outcome = await page.evaluate(async () => {
        const { client } = window as unknown as Window;
        const many = Array.from({ length: 30 }, (_, i) => client.publish('/page/up', `${i} ${'x'.repeat(600)}`));
        const big = client.publish('/page/up', 'y'.repeat(9000)).then(
          () => 'published',
          (error: Error & { bayeuxCode?: number }) => `${error.bayeuxCode} ${error.message}`,
        );
        await Promise.all(many);
        return big;
      });
      assert.equal(outcome, '413 /page/up: too large for callback-polling');
      await waitFor(() => heard.length === 30, 5000, () => `the 30 messages (have ${heard.length})`);
      assert.deepEqual(heard.map((data) => Number.parseInt(String(data), 10)), Array.from({ length: 30 }, (_, i) => i));
      assert.ok(urls.length >= 4, `in several requests (${urls.length})`);
      assert.ok(Math.max(...urls) <= 8000, `URLs of at most 8 000 characters: ${urls.join(', ')}`);
      await page.evaluate(() => (window as unknown as Window).client.publish('/page/up', 'after'));
      await waitFor(() => heard.includes('after'), 3000, 'a publish after the refusal');
      assert.equal(await page.evaluate(() => (window as unknown as Window).client.state), 'connected');
      assert.equal(server.stats().sessions, 1, 'one session throughout');
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

  for (const [offered, fallback, sharing] of [
    [['websocket', 'long-polling'], 'long-polling', 'off'],
    [undefined, 'eventsource', 'off'],
    // Held by a SharedWorker, the move is the worker's: the page hears of it all the same.
    [['websocket', 'long-polling'], 'long-polling', 'worker'],
  ] as const) {
    it(`refused its WebSocket (429), moves its ${fallback} session to one once the server takes it again (sharing: ${sharing})`, async () => {
      // One WebSocket per address, held by another socket of this machine: the page's is refused.
      const { server, origin } = await serve({ maxWebsocketsPerIp: 1, timeout: 300, heartbeat: 1000, ...(offered ? { transports: [...offered] } : {}) });
      const held = new WS(`${origin.replace('http', 'ws')}/bayeux`);
      await once(held, 'open');
      const context = await browser.newContext();
      try {
        const page = await open(context, origin);
        assert.equal(await page.evaluate((shared) => (window as unknown as Window).start({ shared, transportRetry: 300 }), sharing !== 'off'), fallback);
        assert.equal(await page.evaluate(() => (window as unknown as Window).client.sharing), sharing);
        assert.ok(server.stats().websocketsRefused >= 1, 'the WebSocket was refused');
        const clientId = (await page.evaluate(() => (window as unknown as Window).client.clientId))!;
        held.close();
        await waitFor(() => server.getSession(clientId)?.connectionType === 'websocket', 5000, 'the session to move to the WebSocket');
        await publishUntilSeen(server, page, 1, 'after the move');
        const after = await page.evaluate(() => {
          const w = window as unknown as Window;
          return { clientId: w.client.clientId, transport: w.client.transport, states: w.states, moves: w.moves };
        });
        assert.deepEqual(after, { clientId, transport: 'websocket', states: ['connecting:', `connected:${fallback}`], moves: [`${fallback}>websocket`] }, 'the same session, connected throughout, the move told');
      } finally {
        held.close();
        await context.close();
        await server.close();
      }
    });
  }
});
