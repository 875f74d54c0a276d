/**
 * maxSessionsPerBrowser: the lines of one browser (its BAYEUX_BROWSER cookie and a browser's user
 * agent) open at once, held long-polls and streams, past which a poll is answered at once with the
 * multiple-clients advice and a stream is refused. Raw HTTP here, the way a browser's requests
 * look; the tabs of a real browser are in browser-transports.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, type TestServer } from './helpers.js';

const BROWSER_UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36';

interface Answer {
  body: Record<string, unknown>[];
  ms: number;
}

describe('maxSessionsPerBrowser', () => {
  let test: TestServer;
  let cookie: string;

  /** A POST as a browser (or, with `ua`, another client) sends it: the browser's cookie, its user agent. */
  async function send(body: unknown, { ua = BROWSER_UA, signal = null }: { ua?: string | undefined; signal?: AbortSignal | null | undefined } = {}): Promise<Answer> {
    const started = Date.now();
    const response = await fetch(test.url, { method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: cookie, 'User-Agent': ua }, body: JSON.stringify(body), signal });
    return { body: (await response.json()) as Record<string, unknown>[], ms: Date.now() - started };
  }

  /** A session of the browser, past its first connect (answered at once): its next poll may be held. */
  async function session(ua?: string): Promise<string> {
    const { body } = await send([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], id: 'h' }], { ua });
    const clientId = body[0]?.clientId as string;
    assert.ok(clientId, JSON.stringify(body));
    await poll(clientId, ua);
    return clientId;
  }

  function poll(clientId: string, ua?: string, signal?: AbortSignal): Promise<Answer> {
    return send([{ channel: '/meta/connect', clientId, connectionType: 'long-polling', id: 'c' }], { ua, signal });
  }

  const settle = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

  before(async () => {
    // A poll is held 1 s here; one answered at once comes back in a few ms.
    test = await startServer({ maxSessionsPerBrowser: 1, multiSessionInterval: 1500, timeout: 1000 });
    const response = await fetch(test.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
    const set = response.headers.getSetCookie().find((line) => line.startsWith('BAYEUX_BROWSER='));
    assert.ok(set, 'the server gives a browser cookie');
    cookie = set.split(';')[0]!;
  });

  after(async () => {
    await test.close();
  });

  it('holds one poll of the browser; another tab\'s is answered at once with the multiple-clients advice, and held again once the first returned', async () => {
    const [a, b] = [await session(), await session()];
    const before = test.server.stats().pastBrowserLimit;
    const held = poll(a);
    await settle(100);
    const past = await poll(b);
    assert.ok(past.ms < 500, `answered at once: ${past.ms} ms`);
    assert.equal(past.body[0]?.successful, true);
    assert.deepEqual(past.body[0]?.advice, { reconnect: 'retry', interval: 1500, timeout: 1000, 'multiple-clients': true });
    assert.equal(test.server.stats().pastBrowserLimit, before + 1);
    const first = await held;
    assert.ok(first.ms >= 900, `the first tab's poll was held: ${first.ms} ms`);
    assert.equal((first.body[0]?.advice as Record<string, unknown>)['multiple-clients'], undefined);
    // The browser has no poll held now: the other tab's next one is.
    const next = await poll(b);
    assert.ok(next.ms >= 900, `held once the first returned: ${next.ms} ms`);
    assert.equal((next.body[0]?.advice as Record<string, unknown>).interval, 0);
  });

  it('a poll answered at once carries what waited for its session', async () => {
    const [a, b] = [await session(), await session()];
    const { body } = await send([{ channel: '/meta/subscribe', clientId: b, subscription: '/polls/carried', id: 's' }]);
    assert.equal(body[0]?.successful, true);
    const held = poll(a);
    await settle(100);
    await test.server.publish('/polls/carried', { n: 1 });
    const past = await poll(b);
    assert.ok(past.ms < 500, `answered at once: ${past.ms} ms`);
    assert.deepEqual(past.body.slice(1).map((m) => m.data), [{ n: 1 }]);
    await held;
  });

  it('a session\'s own new poll takes its earlier poll\'s place rather than counting as a second tab', async () => {
    const a = await session();
    const first = poll(a);
    await settle(100);
    const second = poll(a);
    assert.ok((await first).ms < 500, 'the earlier poll gave way');
    const answer = await second;
    assert.ok(answer.ms >= 900, `the new poll was held: ${answer.ms} ms`);
  });

  it('a poll the browser gave up on (the request aborted) no longer counts', async () => {
    const [a, b] = [await session(), await session()];
    const aborted = new AbortController();
    const gone = poll(a, undefined, aborted.signal).catch(() => null);
    await settle(100);
    aborted.abort();
    await gone;
    await settle(100);
    const answer = await poll(b);
    assert.ok(answer.ms >= 900, `held: ${answer.ms} ms`);
  });

  /** Opens an EventSource-like stream for `clientId`; resolves once its head arrived. */
  async function stream(clientId: string, signal: AbortSignal): Promise<Response> {
    return fetch(`${test.url}/${clientId}`, { headers: { Accept: 'text/event-stream', Cookie: cookie, 'User-Agent': BROWSER_UA }, signal });
  }

  it('counts a stream as a line: past the limit a stream is refused (429) and a poll answered at once; its end gives the line back', async () => {
    const [a, b] = [await session(), await session()];
    const open = new AbortController();
    const line = await stream(a, open.signal);
    assert.equal(line.status, 200);
    const refused = await stream(b, new AbortController().signal);
    assert.equal(refused.status, 429);
    const [error] = (await refused.json()) as Array<{ error: string }>;
    assert.match(error!.error, /^429::.*maxSessionsPerBrowser/);
    const past = await poll(b);
    assert.ok(past.ms < 500, `answered at once: ${past.ms} ms`);
    assert.equal((past.body[0]?.advice as Record<string, unknown>)['multiple-clients'], true);
    // The session's own new stream replaces its first and is not refused.
    const again = new AbortController();
    const replacing = await stream(a, again.signal);
    assert.equal(replacing.status, 200, 'the session\'s own new stream takes the old one\'s place');
    open.abort();
    again.abort();
    await settle(200);
    const held = await poll(b);
    assert.ok(held.ms >= 900, `the line was given back once the stream closed: ${held.ms} ms`);
  });

  it('clients that are not browsers (no browser user agent) are not limited, whatever cookie they share', async () => {
    const [a, b] = [await session('node'), await session('cometd-nodejs-client')];
    const polls = [poll(a, 'node'), poll(b, 'cometd-nodejs-client')];
    for (const answer of await Promise.all(polls)) assert.ok(answer.ms >= 900, `held: ${answer.ms} ms`);
  });
});

describe('maxSessionsPerBrowser: 0', () => {
  it('holds every poll of one browser', async () => {
    const test = await startServer({ maxSessionsPerBrowser: 0, timeout: 800 });
    try {
      const headers = { 'Content-Type': 'application/json', 'User-Agent': BROWSER_UA, Cookie: 'BAYEUX_BROWSER=AAAAAAAAAAAAAAAAAAAAAAAA' };
      const send = async (body: unknown): Promise<Record<string, unknown>[]> => (await (await fetch(test.url, { method: 'POST', headers, body: JSON.stringify(body) })).json()) as Record<string, unknown>[];
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const [reply] = await send([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
        ids.push(reply!.clientId as string);
        await send([{ channel: '/meta/connect', clientId: reply!.clientId, connectionType: 'long-polling' }]);
      }
      const started = Date.now();
      const answers = await Promise.all(ids.map((clientId) => send([{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }])));
      assert.ok(Date.now() - started >= 700, 'every poll was held');
      for (const [reply] of answers) assert.equal((reply!.advice as Record<string, unknown>)['multiple-clients'], undefined);
      assert.equal(test.server.stats().pastBrowserLimit, 0);
    } finally {
      await test.close();
    }
  });
});
