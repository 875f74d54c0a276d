/**
 * The demo gallery in a real browser (Debian's Chromium driven by playwright-core) on a cluster:
 * two `serve()` nodes sharing one Redis, each browser on another node. The board and the slides
 * live on one node; the other node's pages reach them through it, and everyone sees one board
 * and one deck. Every page loads without a console error or a failed request.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser, BrowserContext } from 'playwright-core';
import { launchChromium, openConnected, type Watched } from './browser-kit.js';
import { serve, type Running } from '../src/index.js';

const VIEWPORT = { width: 1200, height: 800 };
const REDIS = process.env.PERIHELION_TEST_REDIS ?? 'redis://127.0.0.1:6379';

describe('demo gallery in Chromium on two nodes of a cluster', () => {
  const nodes: Running[] = [];
  const stopped = new Set<Running>();
  let browser: Browser;
  const contexts: BrowserContext[] = [];
  const watched: Watched[] = [];

  before(async () => {
    const prefix = `demo-cluster-browser-${process.pid}-${Date.now()}:`;
    // One after the other, each demo ready before the next node starts: the first holds it.
    for (let i = 0; i < 2; i++) {
      const node = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true, redis: REDIS, redisPrefix: prefix }, () => {});
      nodes.push(node);
      assert.equal(await node.demo!.ready, i === 0, `node ${i + 1} holds the demo: ${i === 0}`);
    }
    browser = await launchChromium();
  });

  after(async () => {
    for (const w of watched) w.stop();
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await Promise.all(nodes.filter((node) => !stopped.has(node)).map((node) => node.stop()));
  });

  /** Opens `path` on `node` in a new browser "person" (its own cookies: its own session) and waits until its client is connected. */
  async function open(node: Running, path: string): Promise<Watched> {
    const context = await browser.newContext({ viewport: VIEWPORT });
    contexts.push(context);
    const w = await openConnected(context, `${node.url}${path}`);
    watched.push(w);
    return w;
  }

  function noProblems(w: Watched): void {
    assert.deepEqual(w.problems, [], `problems on ${w.page.url()}`);
  }

  it('board: a browser on each node adds and ticks items, and both see one board', async () => {
    const [a, b] = [await open(nodes[0]!, '/board'), await open(nodes[1]!, '/board')];
    for (const w of [a, b]) await w.page.waitForFunction(() => (window as unknown as { demo: { replica: unknown } }).demo.replica !== null, undefined, { timeout: 5000 });
    await b.page.fill('#text', 'added on the second node');
    await b.page.press('#text', 'Enter');
    await a.page.waitForFunction(() => document.getElementById('items')?.textContent?.includes('added on the second node'), undefined, { timeout: 5000 });
    await a.page.click('#items li:has-text("added on the second node") input[type=checkbox]');
    await b.page.waitForFunction(() => Array.from(document.querySelectorAll('#items li')).some((li) => li.textContent?.includes('added on the second node') && (li.querySelector('input') as HTMLInputElement).checked), undefined, { timeout: 5000 });
    const value = (w: Watched): Promise<string> => w.page.evaluate(() => JSON.stringify((window as unknown as { demo: { replica: { value: unknown } } }).demo.replica.value));
    for (let i = 0; (await value(a)) !== (await value(b)); i++) {
      assert.ok(i < 100, `the boards did not converge: ${await value(a)} / ${await value(b)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (const w of [a, b]) noProblems(w);
  });

  it('slides: a presenter on the second node moves the audience on the first', async () => {
    const audience = await open(nodes[0]!, '/slides');
    const presenter = await open(nodes[1]!, '/slides?presenter');
    await presenter.page.waitForSelector('#slide[data-slide]');
    const start = Number(await presenter.page.getAttribute('#slide', 'data-slide'));
    const target = start < 6 ? start + 1 : start - 1;
    await presenter.page.click(target > start ? '#next' : '#prev');
    await audience.page.waitForSelector(`#slide[data-slide="${target}"]`, { timeout: 5000 });
    for (const w of [audience, presenter]) noProblems(w);
  });

  it('board: when the node holding it stops, the other takes it over; a page open there follows, one opened meanwhile starts', { timeout: 40_000 }, async () => {
    const before = await open(nodes[1]!, '/board');
    await before.page.waitForFunction(() => (window as unknown as { demo: { replica: unknown } }).demo.replica !== null, undefined, { timeout: 5000 });
    const items = (w: Watched): Promise<string> => w.page.evaluate(() => document.getElementById('items')?.textContent ?? '');
    assert.ok((await items(before)).includes('added on the second node'), 'the board of the first test');
    await nodes[0]!.stop();
    stopped.add(nodes[0]!);
    // Opened while the board may be held by nobody: the page asks again until it is.
    const meanwhile = await open(nodes[1]!, '/board');
    await meanwhile.page.waitForFunction(() => (window as unknown as { demo: { replica: unknown } }).demo.replica !== null, undefined, { timeout: 20_000 });
    // The new holder's board starts afresh: the page open on it follows.
    await before.page.waitForFunction(() => !document.getElementById('items')?.textContent?.includes('added on the second node'), undefined, { timeout: 20_000 });
    await meanwhile.page.fill('#text', 'after the takeover');
    await meanwhile.page.press('#text', 'Enter');
    await before.page.waitForFunction(() => document.getElementById('items')?.textContent?.includes('after the takeover'), undefined, { timeout: 5000 });
    assert.equal(await meanwhile.page.textContent('#error'), '', 'no error left on the page');
  });
});
