/**
 * What the browser tests share: Debian's Chromium launched headless with the flags this closed
 * network needs, a watch on a page for anything that went wrong, and screenshots (written to
 * test-output/screenshots/, and copied to docs/screenshots/ for the README with UPDATE_SCREENSHOTS=1).
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const SHOTS = `${ROOT}test-output/screenshots`;
const DOCS_SHOTS = `${ROOT}docs/screenshots`;

/** `args`: more of Chromium's flags (a certificate to trust, say). */
export async function launchChromium(args: string[] = []): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`);
  return chromium.launch({
    executablePath: CHROMIUM,
    // Without the background-networking flags Chromium's own connections are refused by this closed network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', ...args],
  });
}

/** What went wrong on a page: uncaught errors, console errors, failed requests, HTTP errors. */
export interface Watched {
  page: Page;
  problems: string[];
  /** Stops collecting (before a page is closed, or taken offline on purpose). */
  stop(): void;
}

export function watch(page: Page): Watched {
  const problems: string[] = [];
  let on = true;
  const add = (problem: string): void => {
    if (on) problems.push(problem);
  };
  page.on('pageerror', (error) => add(`pageerror: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') add(`console: ${message.text()} ${message.location().url}`);
  });
  page.on('requestfailed', (request) => add(`request failed: ${request.method()} ${request.url()} ${request.failure()?.errorText ?? ''}`));
  page.on('response', (response) => {
    if (response.status() >= 400) add(`HTTP ${response.status()}: ${response.url()}`);
  });
  return { page, problems, stop: () => void (on = false) };
}

/** Opens `url` in a new page of `context`, watched from the start, and waits until the demo page's client is connected. */
export async function openConnected(context: BrowserContext, url: string): Promise<Watched> {
  const w = watch(await context.newPage());
  await w.page.goto(url);
  await w.page.waitForSelector('#conn-state:text-is("connected")', { timeout: 10_000 });
  return w;
}

/** Takes `name`.png of the page; with `forReadme`, also copies it to docs/screenshots/ when UPDATE_SCREENSHOTS=1. */
export async function screenshot(page: Page, name: string, { fullPage = false, forReadme = true } = {}): Promise<void> {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage });
  if (forReadme && process.env.UPDATE_SCREENSHOTS === '1') {
    mkdirSync(DOCS_SHOTS, { recursive: true });
    copyFileSync(`${SHOTS}/${name}.png`, `${DOCS_SHOTS}/${name}.png`);
  }
}
