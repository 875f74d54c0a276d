/**
 * Every transport in a real browser (Debian's Chromium via playwright-core): the Faye browser
 * client over EventSource, a plain EventSource, the CometD client over callback-polling (JSONP)
 * and long-polling (and in two tabs of one first visit, and in eight tabs of one browser), a page
 * reload with CometD's ReloadExtension, a fetch() body read as an HTTP stream, and the browser's
 * cookie behind a proxy that rewrites the path.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createServer as createHttpServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { createServer, type Perihelion, type ServerOptions } from '../src/index.js';
import { waitFor } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const fayeBundle = readFileSync(join(dirname(require.resolve('faye/package.json')), 'client', 'faye-browser.js'));
const cometdDir = dirname(require.resolve('cometd/package.json'));

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

/** The test pages' files: an empty page at `/`, the Faye browser bundle, the CometD client's modules. */
function servePages(req: IncomingMessage, res: ServerResponse): void {
  const path = (req.url ?? '/').split('?')[0]!;
  if (path === '/') return void res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>t</title>');
  if (path === '/faye.js') return void res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(fayeBundle);
  const match = /^\/cometd\/(\w+\.js)$/.exec(path);
  if (match && existsSync(join(cometdDir, match[1]!))) return void res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(readFileSync(join(cometdDir, match[1]!)));
  res.writeHead(404).end();
}

/**
 * A page that handshakes with CometD's ReloadExtension over one transport, subscribes in its
 * handshake listener (as the extension's documentation has it) and stores its state on unload.
 */
function reloadPage(transport: string): string {
  return `<!doctype html><title>reload</title><script type="module">
import { CometD } from '/cometd/cometd.js';
import { ReloadExtension } from '/cometd/ReloadExtension.js';
window.seen = [];
window.sessions = [];
const cometd = new CometD();
for (const type of cometd.getTransportTypes()) if (type !== ${JSON.stringify(transport)}) cometd.unregisterTransport(type);
cometd.registerExtension('reload', new ReloadExtension());
cometd.configure({ url: location.origin + '/bayeux', logLevel: 'warn' });
cometd.addListener('/meta/handshake', (reply) => {
  if (!reply.successful) return;
  window.sessions.push(cometd.getClientId() + (reply.ext && reply.ext.reload ? ' replayed' : ''));
  cometd.subscribe('/browser/reload', (message) => window.seen.push(message.data), (answer) => { window.subscribed = answer.successful; });
});
window.addEventListener('beforeunload', () => cometd.reload());
cometd.handshake();
</script>`;
}

describe('transports in Chromium', () => {
  let server: Perihelion;
  let origin: string;
  let browser: Browser;
  /** How long the reload test's page takes to load (the gap between two pages of one session). */
  let reloadPageDelay = 0;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH`);
    // A short hold: Faye moves to EventSource at its next connect, which must come soon.
    server = createServer({ jsonp: true, open: true, pingInterval: 0, heartbeat: 1000, timeout: 2000, drainTimeout: 0 });
    const address = await server.listen({
      port: 0,
      host: '127.0.0.1',
      fallback: (req, res) => {
        const path = (req.url ?? '/').split('?')[0]!;
        if (path === '/reload.html') return void setTimeout(() => res.writeHead(200, { 'Content-Type': 'text/html' }).end(reloadPage(new URL(req.url!, 'http://x').searchParams.get('transport')!)), reloadPageDelay);
        servePages(req, res);
      },
    });
    origin = `http://127.0.0.1:${address.port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  async function page(): Promise<Page> {
    const p = await browser.newPage();
    await p.goto(`${origin}/`);
    return p;
  }

  /** Publishes from the server until the page has seen `count` messages (the subscription may still be settling). */
  async function publishUntilSeen(p: Page, channel: string, count: number): Promise<void> {
    for (let i = 0; i < 50; i++) {
      await server.publish(channel, { n: i, text: 'pushed ☀' });
      const seen = await p.evaluate(() => (window as unknown as { seen: unknown[] }).seen.length);
      if (seen >= count) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.fail(`the page never received ${count} messages on ${channel}`);
  }

  it('Faye browser client over EventSource', async () => {
    const p = await page();
    await p.addScriptTag({ url: '/faye.js' });
    await p.evaluate(async (endpoint) => {
      const w = window as unknown as { Faye: any; seen: unknown[]; client: any };
      w.seen = [];
      w.client = new w.Faye.Client(endpoint);
      w.client.disable('websocket');
      await w.client.subscribe('/browser/faye', (data: unknown) => w.seen.push(data));
    }, `${origin}/bayeux`);
    // Faye handshakes over long-polling, then moves to the best transport the server offers.
    await waitFor(() => (server.stats().sessionsByTransport.eventsource ?? 0) >= 1, 8000, 'the Faye client to switch to eventsource');
    await publishUntilSeen(p, '/browser/faye', 3);
    // And the other way: a publish from the page reaches a server-side listener.
    const received: unknown[] = [];
    const stop = server.subscribe('/browser/from-faye', (message) => void received.push(message.data));
    await p.evaluate(() => (window as unknown as { client: any }).client.publish('/browser/from-faye', { hi: 'server' }));
    await waitFor(() => received.length === 1, 5000, 'publish from the Faye browser client');
    assert.deepEqual(received[0], { hi: 'server' });
    stop();
    await p.evaluate(() => (window as unknown as { client: any }).client.disconnect());
    await p.close();
  });

  it('a plain EventSource after a handshake by fetch', async () => {
    const p = await page();
    await p.evaluate(async () => {
      const w = window as unknown as { seen: unknown[] };
      w.seen = [];
      const post = async (body: unknown): Promise<any[]> =>
        (await fetch('/bayeux', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })).json() as Promise<any[]>;
      const [hs] = await post([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['eventsource'] }]);
      await post([
        { channel: '/meta/connect', clientId: hs.clientId, connectionType: 'eventsource' },
        { channel: '/meta/subscribe', clientId: hs.clientId, subscription: '/browser/es' },
      ]);
      const source = new EventSource(`/bayeux/${hs.clientId}`);
      await new Promise((resolve) => source.addEventListener('connected', resolve, { once: true }));
      source.onmessage = (event) => {
        for (const message of JSON.parse(event.data)) w.seen.push(message);
      };
    });
    await publishUntilSeen(p, '/browser/es', 1);
    const [first] = await p.evaluate(() => (window as unknown as { seen: { channel: string; data: { text: string } }[] }).seen);
    assert.equal(first?.channel, '/browser/es');
    assert.equal(first?.data.text, 'pushed ☀');
    await p.close();
  });

  for (const transport of ['callback-polling', 'long-polling'] as const) {
    it(`CometD browser client over ${transport}`, async () => {
      const p = await page();
      const used = await p.evaluate(async ({ endpoint, transport }) => {
        const { CometD } = await import('/cometd/cometd.js' as string);
        const w = window as unknown as { seen: unknown[] };
        w.seen = [];
        const cometd = new CometD();
        for (const type of cometd.getTransportTypes()) if (type !== transport) cometd.unregisterTransport(type);
        cometd.configure({ url: endpoint, logLevel: 'warn' });
        await new Promise<void>((resolve, reject) => cometd.handshake((reply: any) => (reply.successful ? resolve() : reject(new Error(JSON.stringify(reply))))));
        await new Promise<void>((resolve) => cometd.subscribe('/browser/cometd', (message: any) => w.seen.push(message.data), () => resolve()));
        return cometd.getTransport().type as string;
      }, { endpoint: `${origin}/bayeux`, transport });
      assert.equal(used, transport);
      await publishUntilSeen(p, '/browser/cometd', 3);
      await p.close();
    });
  }

  it('two tabs of a first visit (one cookie jar, no cookie yet) each keep their first session over CometD long-polling', async () => {
    // Both tabs handshake at once without a cookie; each answer sets one, and the browser keeps
    // the last. Subscribing right after handshake() (not in a handshake listener) is common.
    // Handshakes are answered 300 ms late here, so that both are in flight at once, as on a slow
    // network (on loopback the second tab's often leaves after the first's answer).
    const stopDelay = server.addExtension({
      incoming: (message) => (message.channel === '/meta/handshake' ? new Promise((resolve) => setTimeout(() => resolve(message), 300)) : message),
    });
    const context = await browser.newContext();
    try {
      const tabs = await Promise.all([context.newPage(), context.newPage()]);
      await Promise.all(tabs.map((tab) => tab.goto(`${origin}/`)));
      await Promise.all(
        tabs.map((tab) =>
          tab.evaluate(async (endpoint) => {
            const { CometD } = await import('/cometd/cometd.js' as string);
            const w = window as unknown as { seen: unknown[]; handshakes: number };
            w.seen = [];
            w.handshakes = 0;
            const cometd = new CometD();
            for (const type of cometd.getTransportTypes()) if (type !== 'long-polling') cometd.unregisterTransport(type);
            cometd.configure({ url: endpoint, logLevel: 'warn' });
            cometd.addListener('/meta/handshake', (reply: any) => {
              if (reply.successful) w.handshakes++;
            });
            cometd.handshake();
            cometd.subscribe('/browser/tabs', (message: any) => w.seen.push(message.data));
          }, `${origin}/bayeux`),
        ),
      );
      for (const tab of tabs) await publishUntilSeen(tab, '/browser/tabs', 3);
      const handshakes = await Promise.all(tabs.map((tab) => tab.evaluate(() => (window as unknown as { handshakes: number }).handshakes)));
      assert.deepEqual(handshakes, [1, 1], 'a tab was refused its session and handshook again');
      const cookies = await context.cookies(`${origin}/bayeux`);
      assert.equal(cookies.filter((c) => c.name === 'BAYEUX_BROWSER').length, 1);
    } finally {
      stopDelay();
      await context.close();
    }
  });

  // ReloadExtension keeps a page's session across a reload: the unloading page stores the
  // handshake reply, the new one replays it and connects with the same clientId. The server must
  // keep the session while neither page holds a line, and what was published meanwhile.
  for (const transport of ['websocket', 'long-polling'] as const) {
    it(`CometD ReloadExtension over ${transport}: a page reload keeps the session and what was published during it`, async () => {
      const p = await browser.newPage();
      try {
        reloadPageDelay = 0;
        await p.goto(`${origin}/reload.html?transport=${transport}`);
        await p.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true);
        const [before] = await p.evaluate(() => (window as unknown as { sessions: string[] }).sessions);
        await publishUntilSeen(p, '/browser/reload', 1);
        reloadPageDelay = 1500;
        const reloading = p.reload();
        // Published once the old page has unloaded (at once) and before the new one loads.
        await new Promise((resolve) => setTimeout(resolve, 700));
        await server.publish('/browser/reload', { text: 'during the reload' });
        await reloading;
        await p.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true);
        const sessions = await p.evaluate(() => (window as unknown as { sessions: string[] }).sessions);
        assert.deepEqual(sessions, [`${before} replayed`], 'the new page went on with the same session');
        await p.waitForFunction(() => (window as unknown as { seen: Array<{ text: string }> }).seen.some((m) => m.text === 'during the reload'), null, { timeout: 5000 });
        assert.equal(server.getSession(before!)?.id, before);
      } finally {
        reloadPageDelay = 0;
        await p.close();
      }
    });
  }

  it('a fetch() body read as an HTTP stream', async () => {
    const p = await page();
    await p.evaluate(async () => {
      const w = window as unknown as { seen: unknown[] };
      w.seen = [];
      const post = async (body: unknown): Promise<any[]> =>
        (await fetch('/bayeux', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })).json() as Promise<any[]>;
      const [hs] = await post([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['http-streaming'] }]);
      await post([
        { channel: '/meta/connect', clientId: hs.clientId, connectionType: 'http-streaming' },
        { channel: '/meta/subscribe', clientId: hs.clientId, subscription: '/browser/stream' },
      ]);
      const response = await fetch(`/bayeux/${hs.clientId}`, { headers: { Accept: 'application/x-ndjson' } });
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = '';
      void (async () => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          buffered += value;
          let newline: number;
          while ((newline = buffered.indexOf('\n')) !== -1) {
            const line = buffered.slice(0, newline);
            buffered = buffered.slice(newline + 1);
            for (const message of JSON.parse(line)) w.seen.push(message);
          }
        }
      })();
    });
    await publishUntilSeen(p, '/browser/stream', 2);
    await p.close();
  });

  // A browser keeps six HTTP/1.1 connections to one host for all its tabs. Eight tabs of a page
  // that long-polls or streams, without maxSessionsPerBrowser: with CometD long-polling six held
  // polls took them all, and the seventh and eighth tabs neither loaded nor subscribed until a
  // publish released the polls (they missed what it carried); with Faye, whose fallback from a
  // blocked WebSocket is EventSource, the sixth tab stalled after its handshake and the seventh
  // and eighth never loaded (measured). Here polls are held 30 s, the default.
  describe('eight tabs of one browser without WebSocket', () => {
    let many: Perihelion;
    let manyOrigin: string;

    before(async () => {
      many = createServer({ open: true, pingInterval: 0, drainTimeout: 0 });
      const address = await many.listen({
        port: 0,
        host: '127.0.0.1',
        fallback: servePages,
      });
      manyOrigin = `http://127.0.0.1:${address.port}`;
    });

    after(async () => {
      await many?.close();
    });

    /** Sets up a client in the page that records what `/browser/tabs8` carries and sets `subscribed`. */
    const clients = {
      'CometD long-polling': async (endpoint: string) => {
        const { CometD } = await import('/cometd/cometd.js' as string);
        const w = window as unknown as { seen: unknown[]; subscribed: boolean };
        w.seen = [];
        const cometd = new CometD();
        for (const type of cometd.getTransportTypes()) if (type !== 'long-polling') cometd.unregisterTransport(type);
        cometd.configure({ url: endpoint, logLevel: 'warn' });
        cometd.addListener('/meta/handshake', (reply: any) => {
          if (reply.successful) cometd.subscribe('/browser/tabs8', (message: any) => w.seen.push(message.data), (answer: any) => (w.subscribed = answer.successful));
        });
        cometd.handshake();
      },
      'Faye on EventSource': async (endpoint: string) => {
        await new Promise<void>((resolve, reject) => {
          const script = document.createElement('script');
          script.src = '/faye.js';
          script.onload = () => resolve();
          script.onerror = () => reject(new Error('faye.js did not load'));
          document.head.appendChild(script);
        });
        const w = window as unknown as { seen: unknown[]; subscribed: boolean; Faye: any };
        w.seen = [];
        const client = new w.Faye.Client(endpoint);
        client.disable('websocket');
        client.subscribe('/browser/tabs8', (data: unknown) => w.seen.push(data)).then(() => (w.subscribed = true));
      },
    };

    for (const [name, setUp] of Object.entries(clients)) {
      it(`${name}: with the default maxSessionsPerBrowser, every tab loads, subscribes and receives`, async () => {
        const context = await browser.newContext();
        const before = many.stats().pastBrowserLimit;
        try {
          const tabs: Page[] = [];
          for (let i = 0; i < 8; i++) {
            const tab = await context.newPage();
            tabs.push(tab);
            // Not awaited: a tab's page load waits for a free connection like everything else.
            void tab
              .goto(`${manyOrigin}/`)
              .then(() => tab.evaluate(setUp, `${manyOrigin}/bayeux`))
              .catch(() => {});
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
          // Before anything is published: every tab must get there on its own.
          const subscribed = async (): Promise<number> =>
            (
              await Promise.all(
                tabs.map((tab) =>
                  Promise.race([
                    tab.evaluate(() => (window as unknown as { subscribed?: boolean }).subscribed === true).catch(() => false),
                    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 500)),
                  ]),
                ),
              )
            ).filter(Boolean).length;
          let ready = 0;
          for (const deadline = Date.now() + 15_000; ready < 8 && Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 200))) ready = await subscribed();
          assert.equal(ready, 8, 'tabs subscribed before anything was published');
          for (let n = 0; n < 3; n++) await many.publish('/browser/tabs8', { n });
          for (const tab of tabs) await tab.waitForFunction(() => (window as unknown as { seen: unknown[] }).seen.length === 3, null, { timeout: 10_000 });
          assert.ok(many.stats().pastBrowserLimit > before, 'the tabs past the limit polled');
        } finally {
          await context.close();
        }
      });
    }
  });

  // A page on one origin, the server on another, listed in allowedOrigins, JSONP left off: Faye
  // handshakes over JSONP across origins (its handshake takes only same-origin long-polling or
  // callback-polling), then moves to the WebSocket or to CORS long-polling.
  describe('Faye browser client on a page of another, allowed origin', () => {
    let remote: Perihelion;
    let pages: Server;
    let pageOrigin: string;

    before(async () => {
      pages = createHttpServer((req, res) => {
        if (req.url === '/faye.js') return void res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(fayeBundle);
        res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>app</title><script src="/faye.js"></script>');
      });
      await new Promise<void>((resolve) => pages.listen(0, '127.0.0.1', resolve));
      // localhost and 127.0.0.1 are two origins to the browser.
      pageOrigin = `http://localhost:${(pages.address() as AddressInfo).port}`;
      remote = createServer({ open: true, pingInterval: 0, drainTimeout: 0, allowedOrigins: [pageOrigin] });
      await remote.listen({ port: 0, host: '127.0.0.1' });
    });

    after(async () => {
      await remote?.close();
      await new Promise((resolve) => pages?.close(resolve));
    });

    for (const [name, disabled] of [['WebSocket', []], ['CORS long-polling', ['websocket', 'eventsource']]] as const) {
      it(`handshakes over JSONP, then subscribes and receives over ${name}`, async () => {
        const p = await browser.newPage();
        try {
          await p.goto(`${pageOrigin}/`);
          const endpoint = `http://127.0.0.1:${remote.address()!.port}/bayeux`;
          await p.evaluate(
            ({ endpoint, disabled }) => {
              const w = window as unknown as { seen: unknown[]; subscribed: boolean; Faye: any };
              w.seen = [];
              const client = new w.Faye.Client(endpoint);
              for (const type of disabled) client.disable(type);
              client.subscribe('/browser/remote', (data: unknown) => w.seen.push(data)).then(() => (w.subscribed = true));
            },
            { endpoint, disabled: [...disabled] },
          );
          await p.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true, null, { timeout: 10_000 });
          await remote.publish('/browser/remote', { across: 'origins' });
          await p.waitForFunction(() => (window as unknown as { seen: unknown[] }).seen.length === 1, null, { timeout: 5000 });
          const types = Object.keys(remote.stats().sessionsByTransport);
          assert.ok(types.includes(name === 'WebSocket' ? 'websocket' : 'cross-origin-long-polling'), `the session moved on: ${types.join(', ')}`);
        } finally {
          await p.close();
        }
      });
    }
  });

  // Faye falls back to EventSource when the WebSocket is blocked. On a restart its EventSource
  // reconnects by itself; a 404 made it stop, silently, and Faye came back only with its next
  // keep-alive connect, `timeout` later (measured: 30 s). Told to come back soon at shutdown and
  // refused in the stream by the new server (402, handshake), it comes back in a few seconds.
  it('Faye browser client on EventSource comes back within seconds after a restart', async () => {
    const page = '<!doctype html><title>t</title><script src="/faye.js"></script>';
    const fallback = (req: IncomingMessage, res: ServerResponse): void => {
      const path = (req.url ?? '/').split('?')[0]!;
      if (path === '/faye.js') return void res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(fayeBundle);
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(page);
    };
    // A short hold: Faye moves from long-polling to EventSource at its next connect.
    let first: Perihelion | null = createServer({ open: true, pingInterval: 0, drainTimeout: 0, timeout: 2000 });
    const { port } = await first.listen({ port: 0, host: '127.0.0.1', fallback });
    const second = createServer({ open: true, pingInterval: 0, drainTimeout: 0 });
    const p = await browser.newPage();
    try {
      await p.goto(`http://127.0.0.1:${port}/`);
      await p.evaluate(() => {
        const w = window as unknown as { seen: unknown[]; subscribed: boolean; Faye: any };
        w.seen = [];
        const client = new w.Faye.Client(`${location.origin}/bayeux`);
        client.disable('websocket');
        client.subscribe('/browser/restart', (data: unknown) => w.seen.push(data)).then(() => (w.subscribed = true));
      });
      await p.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true);
      const server1 = first;
      await waitFor(() => server1.stats().sessionsByTransport.eventsource === 1, 8000, 'Faye to move to EventSource');
      await first.close();
      first = null;
      const restarted = Date.now();
      await second.listen({ port, host: '127.0.0.1', fallback });
      let seen = 0;
      for (let n = 0; seen === 0 && Date.now() - restarted < 12_000; n++) {
        await second.publish('/browser/restart', { n });
        await new Promise((resolve) => setTimeout(resolve, 250));
        seen = await p.evaluate(() => (window as unknown as { seen: unknown[] }).seen.length);
      }
      assert.ok(seen > 0, `Faye came back on the restarted server within 12 s (took ${Date.now() - restarted} ms)`);
    } finally {
      await p.close();
      await first?.close();
      await second.close();
    }
  });

  // A stream holds no connect to answer with reconnect "none" when the server ends the session:
  // Faye handshook again with its next keep-alive connect (or, once refused in the stream, its
  // EventSource's reconnect). The stream's last event now carries that reply.
  it('Faye browser client on EventSource, its session ended by the server, stays away', async () => {
    const p = await page();
    try {
      await p.addScriptTag({ url: '/faye.js' });
      await p.evaluate(() => {
        const w = window as unknown as { subscribed: boolean; Faye: any };
        const client = new w.Faye.Client(`${location.origin}/bayeux`);
        client.disable('websocket');
        client.subscribe('/browser/kicked', () => {}).then(() => (w.subscribed = true));
      });
      await p.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true);
      // Faye handshakes over long-polling, then moves to EventSource.
      const onEventSource = async (): Promise<string | undefined> => (await server.sessions()).find((s) => s.subscriptions.includes('/browser/kicked') && s.connectionType === 'eventsource')?.clientId;
      let clientId: string | undefined;
      for (const deadline = Date.now() + 8000; clientId === undefined && Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 100))) clientId = await onEventSource();
      assert.ok(clientId, 'the Faye client moved to eventsource');
      const handshakes: string[] = [];
      const stop = server.on('handshake', (session) => handshakes.push(session.id));
      try {
        server.getSession(clientId)!.disconnect();
        // Past EventSource's retry (5 s) and the server's short keep-alive interval (timeout: 2 s here).
        await new Promise((resolve) => setTimeout(resolve, 7000));
        assert.deepEqual(handshakes, [], 'the page handshook again');
      } finally {
        stop();
      }
    } finally {
      await p.close();
    }
  });

  // Behind a proxy that serves the endpoint under another path (`/realtime/bayeux` outside,
  // `/bayeux` on the server): with its Path the mount path, the browser never sends the
  // BAYEUX_BROWSER cookie back, and a session bound strictly to its browser is refused its second
  // request; `cookiePath` set to the outside path mends it.
  describe('the browser cookie behind a path-rewriting proxy', () => {
    /** A page behind the proxy handshakes, then subscribes: the subscribe's answer. */
    async function handshakeAndSubscribe(options: ServerOptions): Promise<{ subscribe: { successful: boolean; error?: string } }> {
      const inside = createServer({ open: true, sessionBinding: 'strict', drainTimeout: 0, ...options });
      const { port } = await inside.listen({ port: 0, host: '127.0.0.1', fallback: (_req, res) => void res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>t</title>') });
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
        await inside.close();
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
});
