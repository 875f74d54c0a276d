/**
 * The demo gallery in a real browser (Debian's Chromium driven by playwright-core), against
 * `serve()` in this process: every page loads without a console error or a failed request, two
 * browsers (separate contexts: separate sessions) chat and see each other, the ticker's table
 * and chart move, the presenter moves the audience's slide, the job's bar reaches 100 % (also in
 * a tab that was offline for part of it), two browsers edit the board and converge, every page
 * fits a phone's screen and shows a banner while offline.
 *
 * Screenshots of each page go to test-output/screenshots/; with UPDATE_SCREENSHOTS=1 they are
 * also copied to docs/screenshots/ for the README.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { launchChromium, openConnected, screenshot, watch, type Watched } from './browser-kit.js';
import { serve, type Running } from '../src/index.js';

const VIEWPORT = { width: 1200, height: 800 };

describe('demo gallery in Chromium', () => {
  let running: Running;
  let browser: Browser;
  const contexts: BrowserContext[] = [];
  const watched: Watched[] = [];

  before(async () => {
    running = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true }, () => {});
    browser = await launchChromium();
  });

  after(async () => {
    for (const w of watched) w.stop();
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await running?.stop();
  });

  /** A new browser "person": its own cookies, storage and so its own session. */
  async function person(): Promise<BrowserContext> {
    const context = await browser.newContext({ viewport: VIEWPORT });
    contexts.push(context);
    return context;
  }

  /** Opens `path` and waits until the page's client is connected. */
  async function open(context: BrowserContext, path: string): Promise<Watched> {
    const w = await openConnected(context, `${running.url}${path}`);
    watched.push(w);
    return w;
  }

  /** Asserts the page had no problem, then closes it (its aborted requests are no problem). */
  async function done(w: Watched): Promise<void> {
    w.stop();
    assert.deepEqual(w.problems, [], `problems on ${w.page.url()}`);
    await w.page.close();
  }

  it('the landing page links to every demo and shows live data; the favicon is served', async () => {
    const context = await person();
    const home = await open(context, '/');
    const links = await home.page.$$eval('main a.card', (as) => as.map((a) => a.getAttribute('href')));
    assert.deepEqual(links, ['/chat', '/ticker', '/slides', '/job', '/board']);
    await home.page.waitForFunction(() => /PERI \d+\.\d\d/.test(document.getElementById('live-quote')?.textContent ?? ''), undefined, { timeout: 5000 });
    assert.match((await home.page.textContent('#transport')) ?? '', /websocket/);
    await screenshot(home.page, 'index');
    for (const path of ['/favicon.svg', '/favicon.ico']) {
      const response = await fetch(`${running.url}${path}`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('content-type'), 'image/svg+xml');
    }
    assert.equal((await fetch(`${running.url}/chat.html`)).status, 404);
    assert.equal((await fetch(`${running.url}/..%2Fpackage.json`)).status, 404);
    await done(home);
  });

  it('chat: two browsers see each other in the room, see each other typing, and talk; a newcomer gets the history', async () => {
    const [alice, bob] = [await open(await person(), '/chat'), await open(await person(), '/chat')];
    for (const [w, name] of [[alice, 'alice'], [bob, 'bob']] as const) {
      await w.page.fill('#name', name);
      await w.page.click('#rename button');
    }
    // Presence: each sees both names (a join is looked up by name on the server).
    for (const w of [alice, bob]) {
      await w.page.waitForFunction(() => {
        const text = document.getElementById('members')?.textContent ?? '';
        return text.includes('alice') && text.includes('bob');
      }, undefined, { timeout: 10_000 });
    }
    // Typing.
    await bob.page.type('#text', 'hi al', { delay: 20 });
    await alice.page.waitForFunction(() => document.getElementById('typing')?.textContent === 'bob is typing…', undefined, { timeout: 5000 });
    await bob.page.fill('#text', '');
    // Messages, both ways.
    await alice.page.fill('#text', 'hello from alice ☀');
    await alice.page.press('#text', 'Enter');
    await bob.page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('hello from alice ☀'), undefined, { timeout: 5000 });
    await bob.page.fill('#text', 'hi alice!');
    await bob.page.click('#send button');
    await alice.page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('hi alice!'), undefined, { timeout: 5000 });
    assert.match((await alice.page.textContent('#log')) ?? '', /alicehello from alice ☀.*bobhi alice!/);
    // The room was empty when they joined: the note saying so goes with the first message.
    for (const w of [alice, bob]) assert.doesNotMatch((await w.page.textContent('#log')) ?? '', /Nothing said/);

    // A newcomer gets the last messages, in order, once each.
    const carol = await open(await person(), '/chat');
    await carol.page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('hi alice!'), undefined, { timeout: 5000 });
    const log = (await carol.page.textContent('#log')) ?? '';
    assert.equal(log.split('hello from alice ☀').length, 2, log);
    assert.ok(log.indexOf('hello from alice ☀') < log.indexOf('hi alice!'));
    await alice.page.waitForFunction(() => (document.getElementById('members')?.children.length ?? 0) === 3, undefined, { timeout: 10_000 });

    // Another room: empty, and nobody else is there.
    await carol.page.click('button[data-room="random"]');
    await carol.page.waitForFunction(() => document.getElementById('log')?.textContent?.includes('Nothing said in #random'), undefined, { timeout: 5000 });
    assert.equal(await carol.page.$eval('#members', (ul) => ul.children.length), 1);

    await screenshot(alice.page, 'chat');
    for (const w of [alice, bob, carol]) await done(w);
  });

  it('ticker: the table and the chart follow the prices the server pushes', async () => {
    const w = await open(await person(), '/ticker');
    await w.page.waitForFunction(() => document.querySelectorAll('#quotes tr').length === 6, undefined, { timeout: 5000 });
    const snapshot = (): Promise<{ prices: string; chart: string }> =>
      w.page.evaluate(() => ({
        prices: Array.from(document.querySelectorAll('#quotes .price')).map((td) => td.textContent).join(' '),
        chart: (document.getElementById('chart') as HTMLCanvasElement).toDataURL(),
      }));
    const first = await snapshot();
    await w.page.waitForFunction((prices) => Array.from(document.querySelectorAll('#quotes .price')).map((td) => td.textContent).join(' ') !== prices, first.prices, { timeout: 5000 });
    // The chart is drawn on an animation frame, which a loaded machine delays: wait for it (the
    // assertion below says if it never came).
    await w.page
      .waitForFunction((chart) => (document.getElementById('chart') as HTMLCanvasElement).toDataURL() !== chart, first.chart, { timeout: 5000 })
      .catch(() => {});
    const second = await snapshot();
    assert.notEqual(second.prices, first.prices, 'the table changed');
    assert.notEqual(second.chart, first.chart, 'the chart was redrawn');
    // Another symbol, chosen with the keyboard.
    await w.page.focus('#quotes tr[data-symbol="ORBT"] button');
    await w.page.keyboard.press('Enter');
    await w.page.waitForFunction(() => document.getElementById('chart-title')?.textContent?.startsWith('ORBT'), undefined, { timeout: 2000 });
    await w.page.waitForTimeout(3000); // a few seconds of prices for the picture
    await w.page.click('#quotes tr[data-symbol="PERI"] button');
    await screenshot(w.page, 'ticker');
    await done(w);
  });

  it('slides: the presenter moves every audience page; a late joiner starts on the current slide', async () => {
    const audience = await open(await person(), '/slides');
    const presenter = await open(await person(), '/slides?presenter');
    await presenter.page.waitForSelector('#slide[data-slide]');
    const start = Number(await presenter.page.getAttribute('#slide', 'data-slide'));
    const target = Math.min(start + 2, 6);
    while (Number(await presenter.page.getAttribute('#slide', 'data-slide')) < target) {
      await presenter.page.click('#next');
    }
    await audience.page.waitForSelector(`#slide[data-slide="${target}"]`, { timeout: 5000 });
    await presenter.page.keyboard.press('ArrowLeft');
    await audience.page.waitForSelector(`#slide[data-slide="${target - 1}"]`, { timeout: 5000 });
    assert.equal(await audience.page.isVisible('#controls'), false, 'the audience has no controls');
    const late = await open(await person(), '/slides');
    await late.page.waitForSelector(`#slide[data-slide="${target - 1}"]`, { timeout: 5000 });
    await screenshot(audience.page, 'slides');
    for (const w of [audience, presenter, late]) await done(w);
  });

  it('job: the progress bar reaches 100 % in every tab, and a tab that was offline for part of it catches up', async () => {
    const starter = await open(await person(), '/job');
    // This tab uses a connection of its own (a forced transport), so going offline really cuts it.
    const context = await person();
    const offline = await open(context, '/job?transport=websocket');
    assert.equal(await offline.page.textContent('#transport'), 'websocket');
    await starter.page.selectOption('#seconds', '5');
    await starter.page.click('#start-button');
    const running = await starter.page.waitForFunction(() => /Job (\d+): running/.exec(document.getElementById('job-title')?.textContent ?? '')?.[1], undefined, { timeout: 5000 });
    const id = Number(await running.jsonValue());
    await offline.page.waitForFunction(() => Number(document.getElementById('bar')?.getAttribute('aria-valuenow')) >= 10, undefined, { timeout: 5000 });

    assert.deepEqual(offline.problems, []);
    offline.stop(); // failed requests and console errors are expected while offline
    await context.setOffline(true);
    await offline.page.waitForSelector('#offline:not([hidden])', { timeout: 10_000 });
    const frozen = Number(await offline.page.getAttribute('#bar', 'aria-valuenow'));
    await starter.page.waitForFunction(() => Number(document.getElementById('bar')?.getAttribute('aria-valuenow')) >= 80, undefined, { timeout: 10_000 });
    assert.ok(Number(await offline.page.getAttribute('#bar', 'aria-valuenow')) <= frozen + 4, 'nothing arrived while offline');
    await context.setOffline(false);

    for (const w of [starter, offline]) {
      await w.page.waitForFunction(() => document.getElementById('bar')?.getAttribute('aria-valuenow') === '100', undefined, { timeout: 15_000 });
      assert.equal(await w.page.textContent('#job-title'), `Job ${id}: done`);
    }
    await offline.page.waitForSelector('#offline[hidden]', { state: 'attached' });
    // Every event of the job reached the tab that was away (recovered from history), once each, in order.
    const events = await offline.page.$$eval('#events li', (lis) => lis.map((li) => li.textContent ?? '').reverse());
    const progress = events.filter((text) => text.includes(`job ${id}: `)).map((text) => Number(/: (\d+) %/.exec(text)![1]));
    assert.deepEqual(progress, Array.from({ length: 49 }, (_, i) => Math.round(((i + 1) / 50) * 100)), events.join('\n'));
    assert.ok(events.some((text) => text.includes('caught up')), 'replayed events are marked');
    assert.match(events.at(-1)!, new RegExp(`job ${id} done`));

    await offline.page.waitForTimeout(400); // the bar's last transition
    await screenshot(offline.page, 'job');
    await done(starter);
    await offline.page.close();
  });

  it('board: two browsers add, tick, reorder and remove items, and converge', async () => {
    const [a, b] = [await open(await person(), '/board'), await open(await person(), '/board')];
    for (const w of [a, b]) await w.page.waitForFunction(() => (window as unknown as { demo: { replica: unknown } }).demo.replica !== null, undefined, { timeout: 5000 });
    const value = (w: Watched): Promise<string> => w.page.evaluate(() => JSON.stringify((window as unknown as { demo: { replica: { value: unknown } } }).demo.replica.value));
    const converged = async (): Promise<Array<{ id: string; text: string; done: boolean }>> => {
      for (let i = 0; i < 100; i++) {
        const [va, vb] = [await value(a), await value(b)];
        const pending = await Promise.all([a, b].map((w) => w.page.evaluate(() => (window as unknown as { demo: { replica: { pendingCount: number } } }).demo.replica.pendingCount)));
        if (va === vb && pending.every((n) => n === 0)) return JSON.parse(va) as Array<{ id: string; text: string; done: boolean }>;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.fail(`the boards did not converge: ${await value(a)} / ${await value(b)}`);
    };

    await a.page.fill('#text', 'buy milk');
    await a.page.press('#text', 'Enter');
    await b.page.waitForFunction(() => document.getElementById('items')?.textContent?.includes('buy milk'), undefined, { timeout: 5000 });
    // B ticks it; A sees it ticked.
    await b.page.click('#items li:has-text("buy milk") input[type=checkbox]');
    await a.page.waitForFunction(() => Array.from(document.querySelectorAll('#items li')).some((li) => li.textContent?.includes('buy milk') && (li.querySelector('input') as HTMLInputElement).checked), undefined, { timeout: 5000 });
    // Both add at the same moment: both items survive.
    await a.page.fill('#text', 'from A');
    await b.page.fill('#text', 'from B');
    await Promise.all([a.page.press('#text', 'Enter'), b.page.press('#text', 'Enter')]);
    let items = await converged();
    assert.ok(items.some((i) => i.text === 'from A') && items.some((i) => i.text === 'from B'), JSON.stringify(items));
    // A moves "buy milk" up while B ticks another item: both changes land (or one is retried).
    const milk = items.findIndex((i) => i.text === 'buy milk');
    await Promise.all([
      a.page.click(`#items li:has-text("buy milk") button[aria-label^="Move"][aria-label$="up"]`),
      b.page.click('#items li:has-text("from A") input[type=checkbox]'),
    ]);
    items = await converged();
    assert.equal(items.findIndex((i) => i.text === 'buy milk'), milk - 1);
    assert.equal(items.find((i) => i.text === 'from A')?.done, true);
    // Removing.
    await b.page.click('#items li:has-text("from B") button[aria-label^="Remove"]');
    items = await converged();
    assert.ok(!items.some((i) => i.text === 'from B'));
    // The screen shows what the replica holds.
    assert.deepEqual(await a.page.$$eval('#items li span', (spans) => spans.map((s) => s.textContent)), items.map((i) => i.text));
    await screenshot(a.page, 'board');

    // With the keyboard alone: the focus stays on the button pressed while its row moves, and goes
    // to the row that takes a removed row's place.
    const last = items.at(-1)!;
    const row = `#items li[data-id="${last.id}"]`;
    await a.page.focus(`${row} button[aria-label$="up"]`);
    await a.page.keyboard.press('Enter');
    await a.page.keyboard.press('Enter');
    items = await converged();
    assert.equal(items.findIndex((i) => i.id === last.id), items.length - 3, JSON.stringify(items));
    assert.equal(await a.page.evaluate(() => document.activeElement?.getAttribute('aria-label')), `Move “${last.text}” up`);
    await a.page.keyboard.press('Tab');
    await a.page.keyboard.press('Tab');
    assert.equal(await a.page.evaluate(() => document.activeElement?.getAttribute('aria-label')), `Remove “${last.text}”`);
    await a.page.keyboard.press('Enter');
    items = await converged();
    assert.ok(!items.some((i) => i.id === last.id));
    assert.equal(await a.page.evaluate(() => document.activeElement?.closest('#items li')?.querySelector('span')?.textContent), items[items.length - 2]!.text);
    // "Remove ticked items" is disabled once it has done its work: the keyboard goes on to the input.
    assert.ok(items.some((i) => i.done));
    await a.page.focus('#clear-done');
    await a.page.keyboard.press('Enter');
    items = await converged();
    assert.ok(!items.some((i) => i.done), JSON.stringify(items));
    assert.equal(await a.page.evaluate(() => document.activeElement?.id), 'text');

    // B's tick crosses A's move of the same item: the server refuses it (409), B's page rolls it
    // back and proposes it again, still a tick. (B's proposal is held until A's move is in.)
    const ticked = items[0]!;
    await b.page.evaluate(() => {
      const page = window as unknown as { demo: { client: { request: (...args: unknown[]) => Promise<unknown> } }; release?: () => void };
      const request = page.demo.client.request.bind(page.demo.client);
      const held = new Promise<void>((resolve) => void (page.release = resolve));
      let first = true;
      page.demo.client.request = async (...args: unknown[]) => {
        if (args[0] === '/service/state' && (args[1] as { op?: string }).op === 'propose' && first) {
          first = false;
          await held;
        }
        return request(...args);
      };
    });
    await b.page.click(`#items li[data-id="${ticked.id}"] input[type=checkbox]`);
    await a.page.click(`#items li[data-id="${ticked.id}"] button[aria-label$="down"]`);
    const version = (w: Watched): Promise<number> => w.page.evaluate(() => (window as unknown as { demo: { replica: { version: number; pendingCount: number } } }).demo.replica.version);
    await a.page.waitForFunction(() => (window as unknown as { demo: { replica: { pendingCount: number } } }).demo.replica.pendingCount === 0, undefined, { timeout: 5000 });
    const moved = await version(a);
    for (let i = 0; i < 100 && (await version(b)) < moved; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    await b.page.evaluate(() => (window as unknown as { release: () => void }).release());
    items = await converged();
    assert.equal(items.findIndex((i) => i.id === ticked.id), 1, JSON.stringify(items));
    assert.deepEqual(items.filter((i) => i.done).map((i) => i.id), [ticked.id], JSON.stringify(items));
    for (const w of [a, b]) await done(w);
  });

  it('every page can be forced onto another transport, and says which one it uses', async () => {
    const context = await person();
    for (const [path, transport] of [['/chat', 'long-polling'], ['/ticker', 'eventsource'], ['/board', 'http-streaming']] as const) {
      const w = await open(context, `${path}?transport=${transport}`);
      await w.page.waitForFunction((t) => document.getElementById('transport')?.textContent === t, transport, { timeout: 5000 });
      assert.equal(await w.page.inputValue('#transport-select'), transport);
      assert.match((await w.page.textContent('#sharing')) ?? '', /own connection/);
      await done(w);
    }
    // Choosing in the select reloads the page with the transport in the address.
    const w = await open(context, '/job');
    w.stop(); // the page reloads: what it had in flight is aborted
    assert.deepEqual(w.problems, []);
    await Promise.all([w.page.waitForURL(/transport=long-polling/), w.page.selectOption('#transport-select', 'long-polling')]);
    const reloaded = watch(w.page);
    await w.page.waitForFunction(() => document.getElementById('transport')?.textContent === 'long-polling', undefined, { timeout: 5000 });
    await w.page.waitForTimeout(500);
    await done(reloaded);
  });

  it('on a phone every page fits the screen; every page shows a banner while offline and drops it once back', async () => {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    contexts.push(context);
    const pages: Watched[] = [];
    for (const path of ['/', '/chat', '/ticker', '/slides', '/job', '/board']) pages.push(await open(context, path));
    await pages[2]!.page.waitForFunction(() => document.querySelectorAll('#quotes tr').length === 6, undefined, { timeout: 5000 });
    for (const { page } of pages) {
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      const wide = await page.evaluate(() => Array.from(document.querySelectorAll('body *')).filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).slice(0, 5).map((e) => `${e.tagName}#${e.id}.${e.className}`));
      assert.ok(overflow <= 0, `${page.url()} is ${overflow}px too wide on a phone: ${wide.join(', ')}`);
      assert.equal(await page.isVisible('#offline'), false, `${page.url()}: no banner while connected`);
    }
    await screenshot(pages[1]!.page, 'chat-phone', { fullPage: true, forReadme: false });
    for (const w of pages) {
      assert.deepEqual(w.problems, [], `problems on ${w.page.url()}`);
      w.stop(); // failed requests and console errors are expected while offline
    }
    await context.setOffline(true);
    for (const { page } of pages) await page.waitForSelector('#offline:not([hidden])', { timeout: 15_000 });
    await context.setOffline(false);
    for (const { page } of pages) {
      await page.waitForSelector('#offline[hidden]', { state: 'attached', timeout: 20_000 });
      await page.waitForSelector('#conn-state:text-is("connected")', { timeout: 5000 });
    }
    for (const { page } of pages) await page.close();
  });
});
