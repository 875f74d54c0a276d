/**
 * The dashboard at /dashboard: the gate (who may see the data), the stats computation (rates,
 * the busiest channels over a few seconds, a bounded map), and the page in a real browser
 * (Debian's Chromium driven by playwright-core) against `serve()` in this process: it loads
 * without a console error or a failed request, its numbers move when Node clients subscribe and
 * publish, its tables list them and the search box filters them; with an API key, the page asks
 * for it, says when it is wrong, and shows the data with the right one.
 *
 * The screenshot goes to test-output/screenshots/dashboard.png; with UPDATE_SCREENSHOTS=1 it is
 * also copied to docs/screenshots/ for the README.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser, Page } from 'playwright-core';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';
import { createServer, type ServerStats } from '@perihelion/server';
import { ChannelRates, RateMeter, STATS_CHANNEL, STATS_PATTERN, Sampler, decideAccess, installDashboard, isLoopback, sameKey } from '../src/dashboard.js';
import { serve, type Running } from '../src/index.js';
import { launchChromium, screenshot, watch } from './browser-kit.js';

const KEY = 'dashboard-test-key-0123456789';
const LOAD_RULES = [{ channel: '/load/**', publish: 'anyone' as const }];

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------------------- the gate

describe('dashboard gate', () => {
  it('with an API key: the key opens it, compared whole; anything else is refused and told why', () => {
    assert.equal(decideAccess({ apiKey: KEY, presented: KEY, remoteAddress: '203.0.113.7' }), 'key');
    assert.equal(decideAccess({ apiKey: KEY, presented: `${KEY}x`, remoteAddress: '127.0.0.1' }), 'wrong-key');
    assert.equal(decideAccess({ apiKey: KEY, presented: KEY.slice(0, -1), remoteAddress: '127.0.0.1' }), 'wrong-key');
    // With a key set, being on this machine is not enough.
    assert.equal(decideAccess({ apiKey: KEY, presented: undefined, remoteAddress: '127.0.0.1' }), 'need-key');
    assert.equal(decideAccess({ apiKey: KEY, presented: '', remoteAddress: '127.0.0.1' }), 'need-key');
    assert.equal(decideAccess({ apiKey: KEY, presented: { key: KEY }, remoteAddress: '127.0.0.1' }), 'need-key');
    assert.equal(sameKey('a', 'a'), true);
    assert.equal(sameKey('a', 'ab'), false);
  });

  it('without a key: loopback only, and not through a proxy', () => {
    for (const address of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) {
      assert.equal(isLoopback(address), true, address);
      assert.equal(decideAccess({ apiKey: undefined, presented: undefined, remoteAddress: address }), 'local', address);
    }
    for (const address of ['203.0.113.7', '10.0.0.1', '::ffff:192.168.1.2', 'fe80::1', '1127.0.0.1', undefined]) {
      assert.equal(isLoopback(address), false, String(address));
      assert.equal(decideAccess({ apiKey: undefined, presented: undefined, remoteAddress: address }), 'not-local', String(address));
    }
    // A key sent to a server that has none opens nothing either.
    assert.equal(decideAccess({ apiKey: undefined, presented: KEY, remoteAddress: '203.0.113.7' }), 'not-local');
    for (const header of ['x-forwarded-for', 'forwarded', 'x-real-ip']) {
      assert.equal(decideAccess({ apiKey: undefined, presented: undefined, remoteAddress: '127.0.0.1', headers: { [header]: '203.0.113.7' } }), 'not-local', header);
    }
  });

  it('the extension refuses a remote client without a key (403), and a local client with a wrong one', async () => {
    const server = createServer({ pingInterval: 0, drainTimeout: 100, channels: [{ channel: '/service/dashboard/*', publish: 'anyone' }] });
    const dashboard = installDashboard(server);
    try {
      const from = (remoteAddress: string, headers: Record<string, string> = {}) => ({ transport: 'long-polling' as const, request: { headers, remoteAddress, url: '/bayeux', browserId: 'test-browser' } });
      const ask = async (context: ReturnType<typeof from>, messages: object[]): Promise<Record<string, unknown>[]> =>
        (await server.process(messages, context)).map((text) => JSON.parse(text) as Record<string, unknown>);
      const handshake = async (context: ReturnType<typeof from>): Promise<string> => {
        const [reply] = await ask(context, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
        return reply!.clientId as string;
      };

      const remote = from('203.0.113.7');
      const clientId = await handshake(remote);
      const [refused] = await ask(remote, [{ channel: '/meta/subscribe', clientId, subscription: STATS_PATTERN }]);
      assert.equal(refused!.successful, false);
      assert.match(String(refused!.error), /^403::dashboard: no API key is set/);
      const [, access] = await ask(remote, [{ channel: '/service/dashboard/access', clientId, data: {}, id: '1' }]);
      assert.deepEqual(access!.data, { keySet: false, access: 'not-local' });
      const [sessions] = await ask(remote, [{ channel: '/service/dashboard/sessions', clientId, data: {}, id: '2' }]);
      assert.equal(sessions!.successful, false);
      assert.match(String(sessions!.error), /^403::/);
      // A list of subscriptions that holds the stats channel is the same request.
      const [listed] = await ask(remote, [{ channel: '/meta/subscribe', clientId, subscription: ['/news', STATS_CHANNEL] }]);
      assert.equal(listed!.successful, false);

      // Through a proxy on this machine: the remote address says nothing, so refused too.
      const proxied = from('127.0.0.1', { 'x-forwarded-for': '203.0.113.7' });
      const proxiedId = await handshake(proxied);
      const [viaProxy] = await ask(proxied, [{ channel: '/meta/subscribe', clientId: proxiedId, subscription: STATS_PATTERN }]);
      assert.equal(viaProxy!.successful, false);

      const local = from('127.0.0.1');
      const localId = await handshake(local);
      const [allowed] = await ask(local, [{ channel: '/meta/subscribe', clientId: localId, subscription: STATS_PATTERN }]);
      assert.equal(allowed!.successful, true, String(allowed!.error));
      assert.equal(dashboard.watchers, 1);
      const [, table] = await ask(local, [{ channel: '/service/dashboard/sessions', clientId: localId, data: { search: localId }, id: '3' }]);
      assert.deepEqual((table!.data as { rows: { clientId: string }[] }).rows.map((row) => row.clientId), [localId]);
      // A local in-process client (no address) is not on this machine's loopback.
      await assert.rejects(server.localClient().subscribe(STATS_PATTERN, () => {}), /403/);
    } finally {
      dashboard.close();
      await server.close();
    }
  });

  it('with a key: only the subscribe and requests that carry it; the key goes no further', async () => {
    const server = createServer({ pingInterval: 0, drainTimeout: 100, apiKey: KEY, channels: [{ channel: '/service/dashboard/*', publish: 'anyone' }] });
    const dashboard = installDashboard(server);
    const seen: unknown[] = [];
    server.subscribe('/service/dashboard/access', (message) => void seen.push(message.ext));
    try {
      const local = { transport: 'long-polling' as const, request: { headers: {}, remoteAddress: '127.0.0.1', url: '/bayeux', browserId: 'test-browser' } };
      const ask = async (messages: object[]): Promise<Record<string, unknown>[]> => (await server.process(messages, local)).map((text) => JSON.parse(text) as Record<string, unknown>);
      const [hello] = await ask([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
      const clientId = hello!.clientId as string;
      const [none] = await ask([{ channel: '/meta/subscribe', clientId, subscription: STATS_PATTERN }]);
      assert.match(String(none!.error), /^403::dashboard: an API key is required/);
      const [wrong] = await ask([{ channel: '/meta/subscribe', clientId, subscription: STATS_PATTERN, ext: { apiKey: 'not the key at all' } }]);
      assert.match(String(wrong!.error), /^403::dashboard: wrong API key/);
      const [right] = await ask([{ channel: '/meta/subscribe', clientId, subscription: STATS_PATTERN, ext: { apiKey: KEY } }]);
      assert.equal(right!.successful, true);
      const [, access] = await ask([{ channel: '/service/dashboard/access', clientId, data: {}, id: '1', ext: { apiKey: KEY, other: 1 } }]);
      assert.deepEqual(access!.data, { keySet: true, access: 'key' });
      assert.deepEqual(seen, [{ other: 1 }]);
    } finally {
      dashboard.close();
      await server.close();
    }
  });
});

// ------------------------------------------------------------------------------ statistics

describe('dashboard statistics', () => {
  it('rates come from the difference between samples, per second', () => {
    const meter = new RateMeter<'a' | 'b'>();
    assert.deepEqual(meter.sample({ a: 100, b: 5 }, 0), { a: 0, b: 0 });
    assert.deepEqual(meter.sample({ a: 150, b: 5 }, 500), { a: 100, b: 0 });
    assert.deepEqual(meter.sample({ a: 160, b: 3 }, 2500), { a: 5, b: 0 }, 'a counter that went back counts 0');
  });

  it('channel rates converge to the publish rate, decay when it stops, and rank the busiest first', () => {
    const rates = new ChannelRates({ halfLifeMs: 2000 });
    for (let second = 0; second < 30; second++) {
      for (let i = 0; i < 20; i++) rates.record('/fast');
      for (let i = 0; i < 2; i++) rates.record('/slow');
      rates.tick(1000);
    }
    const [fast, slow] = rates.top(5);
    assert.equal(fast!.channel, '/fast');
    assert.ok(Math.abs(fast!.rate - 20) < 0.1, `fast ${fast!.rate}`);
    assert.equal(slow!.channel, '/slow');
    assert.ok(Math.abs(slow!.rate - 2) < 0.01, `slow ${slow!.rate}`);
    // Silent for one half-life: half the rate; long silent: forgotten.
    rates.tick(2000);
    assert.ok(Math.abs(rates.top(1)[0]!.rate - 10) < 0.1);
    for (let i = 0; i < 20; i++) rates.tick(1000);
    assert.deepEqual(rates.top(5), []);
    assert.equal(rates.size, 0);
  });

  it('never tracks more than maxChannels: the rest count as other channels', () => {
    const rates = new ChannelRates({ maxChannels: 10, halfLifeMs: 1000 });
    for (let tick = 0; tick < 5; tick++) {
      for (let c = 0; c < 1000; c++) rates.record(`/c/${tick}/${c}`);
      rates.tick(1000);
      assert.ok(rates.size <= 10, `${rates.size} tracked`);
    }
    assert.ok(rates.other > 400, `other ${rates.other}`);
    // The bound keeps the busiest.
    const busy = new ChannelRates({ maxChannels: 3 });
    for (let i = 0; i < 50; i++) busy.record('/busy');
    for (let c = 0; c < 3; c++) busy.record(`/quiet/${c}`);
    busy.tick(1000);
    for (let c = 3; c < 6; c++) busy.record(`/quiet/${c}`);
    busy.tick(1000);
    assert.equal(busy.size, 3);
    assert.equal(busy.top(1)[0]!.channel, '/busy');
  });

  it('a snapshot carries sessions, rates, totals, the top channels, history and latency', () => {
    const sampler = new Sampler({ halfLifeMs: 1000 });
    const stats = (published: number, deliveries: number): ServerStats => ({
      sessions: 3, sessionsByTransport: { websocket: 2, 'long-polling': 1 }, messagesIn: published, published, deliveries,
      queueDrops: 0, slowConsumers: 0, duplicatePublishes: 0, replayed: 0, resent: 0, readsPaused: 0, websocketsRefused: 0, pastBrowserLimit: 0,
    });
    const extra = { history: { channels: 2, messages: 40 }, latency: { count: 5, p50: 1, p95: 2, p99: 3 } };
    sampler.snapshot(stats(0, 0), extra, 10_000);
    for (let i = 0; i < 30; i++) sampler.channels.record('/load/a');
    const snapshot = sampler.snapshot(stats(30, 90), extra, 11_000);
    assert.deepEqual(snapshot.rates, { published: 30, deliveries: 90, messagesIn: 30, queueDrops: 0 });
    assert.equal(snapshot.sessions, 3);
    assert.deepEqual(snapshot.sessionsByTransport, { websocket: 2, 'long-polling': 1 });
    assert.equal(snapshot.topChannels[0]!.channel, '/load/a');
    assert.ok(snapshot.topChannels[0]!.rate > 10);
    assert.deepEqual(snapshot.history, extra.history);
    assert.equal(snapshot.latency.p99, 3);
    assert.equal(snapshot.t, 11_000);
  });

  it('computes nothing while nobody watches, and stops when the last watcher goes', async () => {
    const server = createServer({ pingInterval: 0, drainTimeout: 100 });
    let samples = 0;
    const latency = server.latency.bind(server);
    server.latency = (windowMs?: number) => (samples++, latency(windowMs));
    const dashboard = installDashboard(server, { interval: 50 });
    try {
      const local = { transport: 'long-polling' as const, request: { headers: {}, remoteAddress: '127.0.0.1', url: '/bayeux', browserId: 'test-browser' } };
      const ask = async (messages: object[]): Promise<Record<string, unknown>[]> => (await server.process(messages, local)).map((text) => JSON.parse(text) as Record<string, unknown>);
      const [hello] = await ask([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
      const clientId = hello!.clientId as string;
      await sleep(200);
      assert.equal(samples, 0, 'idle: nothing computed');
      await ask([{ channel: '/meta/subscribe', clientId, subscription: STATS_PATTERN }]);
      assert.equal(dashboard.watchers, 1);
      await sleep(300);
      assert.ok(samples >= 3, `${samples} snapshots while watched`);
      const delivered = await ask([{ channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: { timeout: 0 } }]);
      const snapshots = delivered.filter((message) => message.channel === STATS_CHANNEL);
      assert.ok(snapshots.length >= 1, JSON.stringify(delivered));
      assert.equal((snapshots.at(-1)!.data as { sessions: number }).sessions, 1);
      await ask([{ channel: '/meta/unsubscribe', clientId, subscription: STATS_PATTERN }]);
      assert.equal(dashboard.watchers, 0);
      await sleep(60);
      const after = samples;
      await sleep(300);
      assert.equal(samples, after, 'stopped with the last watcher');
    } finally {
      dashboard.close();
      await server.close();
    }
  });
});

// ------------------------------------------------------------------------------ the page

const numberIn = async (page: Page, selector: string): Promise<number> => Number(((await page.textContent(selector)) ?? '').replace(/[^\d.]/g, '') || Number.NaN);

describe('dashboard in Chromium', () => {
  let running: Running;
  let browser: Browser;
  const clients: Client[] = [];
  let timers: NodeJS.Timeout[] = [];

  before(async () => {
    running = await serve({ server: { pingInterval: 0, channels: LOAD_RULES }, port: 0, host: '127.0.0.1', demo: false }, () => {});
    browser = await launchChromium();
  });

  after(async () => {
    for (const timer of timers) clearInterval(timer);
    await Promise.all(clients.map((client) => client.disconnect().catch(() => {})));
    await browser?.close();
    await running?.stop();
  });

  it('loads cleanly, says why it is open, and its numbers move under load', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const watched = watch(page);
    await page.goto(`${running.url}/dashboard`);
    await page.waitForSelector('#status.connected', { timeout: 10_000 });
    assert.equal(await page.isVisible('#access-local'), true);
    assert.match((await page.textContent('#access-local')) ?? '', /open because no API key is set and you are on this machine/i);
    assert.equal(await page.isVisible('#key-form'), false);
    await page.waitForFunction(() => document.querySelector('#kpi-sessions')?.textContent === '1', undefined, { timeout: 5000 });

    // Load: three Node clients subscribe to a few channels and publish on them.
    for (let i = 0; i < 3; i++) {
      const client = new Client(`${running.url}/bayeux`, { WebSocket });
      clients.push(client);
      await client.subscribe(`/load/${'abc'[i]}`, () => {});
      await client.subscribe('/load/all', () => {});
    }
    timers = [
      setInterval(() => void clients[0]!.publish('/load/a', { n: 1 }).catch(() => {}), 25),
      setInterval(() => void clients[1]!.publish('/load/all', { n: 2 }).catch(() => {}), 100),
      setInterval(() => void clients[2]!.publish('/load/c', { n: 3 }).catch(() => {}), 250),
    ];
    await page.waitForFunction(() => Number(document.querySelector('#kpi-sessions')?.textContent) >= 4, undefined, { timeout: 10_000 });
    await page.waitForFunction(() => Number(document.querySelector('#kpi-in')?.textContent) >= 10, undefined, { timeout: 10_000 });
    assert.ok((await numberIn(page, '#kpi-out')) > 0, 'deliveries out move');
    await page.waitForFunction(() => document.querySelector('#top-channels .name')?.textContent === '/load/a', undefined, { timeout: 10_000 });
    await page.waitForFunction(() => {
      const names = Array.from(document.querySelectorAll('#top-channels .name'), (name) => name.textContent);
      return names.includes('/load/all') && names.includes('/load/c');
    }, undefined, { timeout: 10_000 });
    assert.match((await page.textContent('#kpi-transports')) ?? '', /websocket/);
    await page.waitForFunction(() => document.querySelector('#kpi-p99')?.textContent !== '—', undefined, { timeout: 10_000 });

    // The sessions table lists the clients; the search box filters it.
    for (const client of clients) {
      await page.waitForFunction((id) => document.querySelector('#sessions-table tbody')?.textContent?.includes(id), client.clientId!, { timeout: 10_000 });
    }
    await page.waitForFunction(() => document.querySelector('#channels-table tbody')?.textContent?.includes('/load/all'), undefined, { timeout: 10_000 });
    await page.focus('#search');
    await page.keyboard.type(clients[1]!.clientId!.slice(0, 12));
    await page.waitForFunction(() => document.querySelectorAll('#sessions-table tbody tr').length === 1, undefined, { timeout: 5000 });
    assert.match((await page.textContent('#sessions-table tbody')) ?? '', new RegExp(clients[1]!.clientId!));
    assert.match((await page.textContent('#sessions-caption')) ?? '', /^1 of \d+ match$/);
    await page.fill('#search', '/load/c');
    await page.waitForFunction(() => document.querySelectorAll('#sessions-table tbody tr').length === 1 && document.querySelectorAll('#channels-table tbody tr').length === 1, undefined, { timeout: 5000 });
    await page.fill('#search', '');
    await page.waitForFunction(() => document.querySelectorAll('#sessions-table tbody tr').length >= 4, undefined, { timeout: 5000 });

    // Let the charts fill a little, then the picture for the README.
    await page.locator('#search').blur();
    await sleep(4000);
    await screenshot(page, 'dashboard', { fullPage: true });

    // A phone: nothing overflows sideways.
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    const wide = await page.evaluate(() => Array.from(document.querySelectorAll('body *')).filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).slice(0, 8).map((e) => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`));
    assert.ok(overflow <= 0, `the page is ${overflow}px too wide on a phone: ${wide.join(', ')}`);
    await screenshot(page, 'dashboard-phone', { fullPage: true, forReadme: false });

    assert.deepEqual(watched.problems, []);
    watched.stop();
    await context.close();
  });
});

describe('dashboard in Chromium with an API key', () => {
  let running: Running;
  let browser: Browser;

  before(async () => {
    running = await serve({ server: { pingInterval: 0, apiKey: KEY }, port: 0, host: '127.0.0.1', demo: false }, () => {});
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await running?.stop();
  });

  it('asks for the key, shows no data without it, says when it is wrong, and shows the data with it', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const watched = watch(page);
    const snapshots: string[] = [];
    page.on('websocket', (socket) => socket.on('framereceived', ({ payload }) => {
      if (String(payload).includes(STATS_CHANNEL)) snapshots.push(String(payload));
    }));
    await page.goto(`${running.url}/dashboard`);
    await page.waitForSelector('#key-form:not([hidden])', { timeout: 10_000 });
    assert.equal(await page.isVisible('#key-error'), false);
    assert.equal(await page.isVisible('#access-local'), false);
    await sleep(1500);
    assert.equal(await page.textContent('#kpi-sessions'), '—');
    assert.deepEqual(snapshots.filter((frame) => frame.includes('"sessions"')), [], 'no stats reached the page');

    // A wrong key: said so, still no data.
    await page.fill('#key-input', 'this-is-not-the-key-at-all');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#key-error:not([hidden])', { timeout: 10_000 });
    assert.match((await page.textContent('#key-error')) ?? '', /wrong/i);
    assert.equal(await page.textContent('#kpi-sessions'), '—');

    // The right key: data, and the key is kept for this tab.
    await page.fill('#key-input', KEY);
    await page.click('#key-form button[type=submit]');
    await page.waitForSelector('#access-key:not([hidden])', { timeout: 10_000 });
    await page.waitForFunction(() => Number(document.querySelector('#kpi-sessions')?.textContent) >= 1, undefined, { timeout: 10_000 });
    assert.equal(await page.isVisible('#key-form'), false);
    await page.waitForFunction(() => (document.querySelector('#sessions-table tbody')?.children.length ?? 0) >= 1, undefined, { timeout: 10_000 });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('perihelion.dashboard.key')), KEY);
    // A reload uses the kept key.
    await page.reload();
    await page.waitForFunction(() => Number(document.querySelector('#kpi-sessions')?.textContent) >= 1, undefined, { timeout: 10_000 });
    assert.deepEqual(watched.problems, []);
    watched.stop();
    await context.close();
  });
});
