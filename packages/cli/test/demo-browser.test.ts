/**
 * The demo landing page in a real browser (Debian's Chromium driven by playwright-core): two
 * tabs chat with each other and share the server's counter, through the unchanged CometD client.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { serve, type Running } from '../src/index.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

describe('demo page in Chromium', () => {
  let running: Running;
  let browser: Browser;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`);
    running = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true }, () => {});
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    await browser?.close();
    await running?.stop();
  });

  it('two tabs see each other’s chat messages and the shared counter', async () => {
    const context = await browser.newContext();
    const [a, b] = [await context.newPage(), await context.newPage()];
    const errors: string[] = [];
    for (const page of [a, b]) {
      page.on('pageerror', (error) => errors.push(error.message));
      // The console too: a missing file (a favicon, say) shows there as an error.
      page.on('console', (message) => {
        if (message.type() === 'error') errors.push(`console: ${message.text()} ${message.location().url}`);
      });
      await page.goto(`${running.url}/`);
      await page.waitForSelector('#status.connected', { timeout: 10_000 });
    }
    assert.match((await a.textContent('#transport')) ?? '', /websocket/);

    await a.fill('#name', 'alice');
    await a.fill('#text', 'hello from tab A ☀');
    await a.click('button[type=submit]');
    await b.waitForFunction(() => document.querySelector('#log')?.textContent?.includes('hello from tab A ☀'), undefined, { timeout: 5000 });
    assert.match((await b.textContent('#log')) ?? '', /alice:hello from tab A ☀/);

    await a.click('#reset');
    await b.waitForFunction(() => document.querySelector('#count')?.textContent === '0', undefined, { timeout: 5000 });
    await a.click('#increment');
    await a.click('#increment');
    for (const page of [a, b]) {
      await page.waitForFunction(() => document.querySelector('#count')?.textContent === '2', undefined, { timeout: 5000 });
    }
    assert.deepEqual(errors, []);
    await context.close();
  });
});
