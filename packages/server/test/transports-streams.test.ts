/**
 * The streamed and script transports end to end over real HTTP: Server-Sent Events
 * (`eventsource`), HTTP streaming (`http-streaming`, ndjson) and callback-polling (JSONP).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { browserFetch, handshake, post, readText, sessionRecord, startServer, waitFor, type TestServer } from './helpers.js';

interface OpenStream {
  status: number;
  headers: Headers;
  text(): string;
  until(predicate: (text: string) => boolean, what: string, ms?: number): Promise<void>;
  ended(): boolean;
  close(): void;
}

async function openStream(url: string, accept: string): Promise<OpenStream> {
  const abort = new AbortController();
  const response = await browserFetch(url, { headers: { Accept: accept }, signal: abort.signal });
  let text = '';
  let ended = false;
  if (response.body) {
    readText(
      response.body,
      (chunk) => (text += chunk),
      () => (ended = true),
    );
  }
  return {
    status: response.status,
    headers: response.headers,
    text: () => text,
    until: (predicate, what, ms = 5000) => waitFor(() => predicate(text), ms, () => `${what}; the stream so far: ${JSON.stringify(text.slice(-300))}`),
    ended: () => ended,
    close: () => abort.abort(),
  };
}

/** The JSON arrays carried by the SSE `data:` lines of a stream, in order. */
function sseBatches(text: string): unknown[][] {
  return [...text.matchAll(/^id: \d+\ndata: (.*)$/gm)].map((m) => JSON.parse(m[1]!) as unknown[]);
}

async function subscribe(url: string, clientId: string, channel: string, connectionType: string): Promise<void> {
  const { body } = await post(url, [
    { channel: '/meta/connect', clientId, connectionType, id: 'c1' },
    { channel: '/meta/subscribe', clientId, subscription: channel, id: 's1' },
  ]);
  assert.equal(body[1]?.successful, true, JSON.stringify(body));
}

describe('Server-Sent Events (eventsource)', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ heartbeat: 1000 });
  });
  after(() => t.close());

  it('answers an eventsource connect at once, advising the next one after timeout', async () => {
    const clientId = await handshake(t.url, ['eventsource']);
    const started = Date.now();
    for (let i = 0; i < 2; i++) {
      const { body } = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'eventsource', id: `c${i}` }]);
      assert.equal(body[0]?.successful, true);
      assert.deepEqual(body[0]?.advice, { reconnect: 'retry', interval: 30_000, timeout: 0 });
    }
    assert.ok(Date.now() - started < 1000, 'not held');
  });

  it('streams published messages in order as events with ids, after retry and a connected event', async () => {
    const clientId = await handshake(t.url, ['eventsource']);
    await subscribe(t.url, clientId, '/sse/a', 'eventsource');
    const stream = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    assert.equal(stream.status, 200);
    assert.match(stream.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.equal(stream.headers.get('x-accel-buffering'), 'no');
    assert.match(stream.headers.get('cache-control') ?? '', /no-cache/);
    await stream.until((text) => text.includes('event: connected'), 'connected event');
    assert.match(stream.text(), /^retry: 5000\n\nevent: connected\ndata: \{"clientId":"\w+","heartbeat":1000\}\n\n/);
    for (let i = 0; i < 50; i++) await t.server.publish('/sse/a', { i });
    await stream.until((text) => sseBatches(text).flat().length === 50, '50 messages');
    const received = sseBatches(stream.text()).flat() as { channel: string; data: { i: number } }[];
    assert.deepEqual(received.map((m) => m.data.i), Array.from({ length: 50 }, (_, i) => i));
    assert.ok(received.every((m) => m.channel === '/sse/a' && !('clientId' in m)));
    const ids = [...stream.text().matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    assert.deepEqual(ids, ids.map((_, i) => i + 1), 'event ids count up from 1');
    stream.close();
  });

  it('sends a heartbeat event (which EventSource listeners see, unlike a comment) on an idle stream at most `heartbeat` ms apart', async () => {
    const clientId = await handshake(t.url, ['eventsource']);
    const stream = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    await stream.until((text) => text.includes('event: connected'), 'connected event');
    // No idle gap passes `heartbeat` (1000 ms here): two heartbeats come within 2.5 s. (When a
    // line idle for one whole timer period got its no-op, they came 2 × heartbeat apart.)
    const heartbeats = (text: string): number => text.split('\n\nevent: heartbeat\ndata: []\n\n').length - 1;
    await stream.until((text) => heartbeats(text) >= 2, 'two heartbeat events', 2500);
    stream.close();
  });

  it('keeps messages published while the stream is down and delivers them when it is reopened', async () => {
    const clientId = await handshake(t.url, ['eventsource']);
    await subscribe(t.url, clientId, '/sse/b', 'eventsource');
    const first = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    await t.server.publish('/sse/b', 'one');
    await first.until((text) => text.includes('"one"'), 'first message');
    first.close();
    await waitFor(() => sessionRecord(t.server, clientId)?.connection === null, 2000, 'stream unbound');
    await t.server.publish('/sse/b', 'two');
    const second = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    await second.until((text) => text.includes('"two"'), 'message published while down');
    assert.ok(!second.text().includes('"one"'), 'nothing delivered twice');
    second.close();
  });

  it('replaces a stream opened twice for one session: the first ends, the second carries messages', async () => {
    const clientId = await handshake(t.url, ['eventsource']);
    await subscribe(t.url, clientId, '/sse/c', 'eventsource');
    const first = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    await first.until((text) => text.includes('connected'), 'first stream open');
    const second = await openStream(`${t.url}/${clientId}`, 'text/event-stream');
    await waitFor(() => first.ended(), 2000, 'first stream to end');
    await t.server.publish('/sse/c', 'after');
    await second.until((text) => text.includes('"after"'), 'message on second stream');
    assert.ok(!first.text().includes('"after"'));
    second.close();
  });

  // An EventSource stops for good on a 404 and tells the page nothing: Faye learned of a restart
  // only at its next keep-alive connect, 30 s later. The refusal travels in the stream instead.
  it('refuses a stream for an unknown clientId in the stream: one event, the 402 with advice to handshake; 204 to the EventSource that reconnects after it', async () => {
    const response = await browserFetch(`${t.url}/nosuchclient`, { headers: { Accept: 'text/event-stream' } });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    const text = await response.text();
    assert.ok(!text.includes('event: connected'), 'not a live line');
    const id = /^id: (.+)$/m.exec(text)?.[1];
    assert.ok(id, `the event has an id: ${text}`);
    const [reply] = JSON.parse(/^data: (.+)$/m.exec(text)![1]!) as { channel: string; successful: boolean; error: string; advice: { reconnect: string } }[];
    assert.equal(reply!.channel, '/meta/connect');
    assert.equal(reply!.successful, false);
    assert.match(reply!.error, /^402:nosuchclient:/);
    assert.equal(reply!.advice.reconnect, 'handshake');
    const again = await browserFetch(`${t.url}/nosuchclient`, { headers: { Accept: 'text/event-stream', 'Last-Event-ID': id } });
    assert.equal(again.status, 204, 'an EventSource reconnecting after it is told to stop');
    // A reader of ndjson is not an EventSource: it is answered with the status.
    const ndjson = await browserFetch(`${t.url}/nosuchclient`, { headers: { Accept: 'application/x-ndjson' } });
    assert.equal(ndjson.status, 404);
    const [line] = (await ndjson.json()) as { error: string }[];
    assert.match(line!.error, /^402:nosuchclient:/);
  });

  // A stream holds no connect to tell its client why the session ended; Faye on EventSource
  // handshook again on its next keep-alive connect, as if it had never been told to go.
  it('ends the stream of a session the server ends for good with the reply a held connect gets (reconnect: none), as its last event', async () => {
    for (const accept of ['text/event-stream', 'application/x-ndjson']) {
      const clientId = await handshake(t.url, ['eventsource', 'http-streaming']);
      const stream = await openStream(`${t.url}/${clientId}`, accept);
      await stream.until((text) => text.length > 0, 'stream open');
      t.server.getSession(clientId)!.disconnect();
      await waitFor(() => stream.ended(), 3000, 'the stream to end');
      const last = stream.text().trim().split('\n').filter((line) => line.includes('/meta/connect')).pop() ?? '';
      const [reply] = JSON.parse(last.replace(/^data: /, '')) as { successful: boolean; clientId: string; advice: { reconnect: string } }[];
      assert.deepEqual([reply!.successful, reply!.clientId, reply!.advice.reconnect], [true, clientId, 'none'], accept);
      if (accept === 'text/event-stream') {
        const id = /^id: (.+)$/m.exec(stream.text().slice(stream.text().lastIndexOf('id: ')))?.[1];
        const again = await browserFetch(`${t.url}/${clientId}`, { headers: { Accept: accept, 'Last-Event-ID': id! } });
        assert.equal(again.status, 204, 'the EventSource that reconnects after it is told to stop');
      }
    }
  });

  it('tells an open EventSource at shutdown to come back within one to two seconds, not its usual five', async () => {
    const closing = await startServer();
    const clientId = await handshake(closing.url, ['eventsource']);
    const stream = await openStream(`${closing.url}/${clientId}`, 'text/event-stream');
    await stream.until((text) => text.includes('connected'), 'stream open');
    assert.match(stream.text(), /^retry: 5000$/m);
    await closing.close();
    await waitFor(() => stream.ended(), 3000, 'the stream to end');
    const retries = [...stream.text().matchAll(/^retry: (\d+)$/gm)].map((m) => Number(m[1]));
    assert.equal(retries.length, 2, stream.text());
    assert.ok(retries[1]! >= 1000 && retries[1]! <= 2000, `retry ${retries[1]}`);
  });

  it('keeps a session alive while its stream is open, without connects', async () => {
    const short = await startServer({ maxInterval: 1000, heartbeat: 1000 });
    try {
      const clientId = await handshake(short.url, ['eventsource']);
      const stream = await openStream(`${short.url}/${clientId}`, 'text/event-stream');
      await new Promise((resolve) => setTimeout(resolve, 1800));
      assert.ok(short.server.getSession(clientId), 'alive while streaming');
      stream.close();
      await waitFor(() => short.server.getSession(clientId) === undefined, 4000, 'expiry after the stream closed');
    } finally {
      await short.close();
    }
  });
});

describe('HTTP streaming (ndjson)', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ heartbeat: 1000, streamPadding: 2048 });
  });
  after(() => t.close());

  it('opens with padding and an empty array, then one JSON array per line, heartbeats as []', async () => {
    const clientId = await handshake(t.url, ['http-streaming']);
    await subscribe(t.url, clientId, '/nd/a', 'http-streaming');
    const stream = await openStream(`${t.url}/${clientId}`, 'application/x-ndjson');
    assert.match(stream.headers.get('content-type') ?? '', /^application\/x-ndjson/);
    await stream.until((text) => text.split('\n').length >= 3, 'padding and first line');
    assert.ok(stream.text().length >= 2048, 'padding written first');
    for (let i = 0; i < 20; i++) await t.server.publish('/nd/a', { i });
    await stream.until((text) => text.includes('"i":19'), 'all messages');
    const lines = stream.text().split('\n').filter((line) => line.trim() !== '');
    const batches = lines.map((line) => JSON.parse(line) as { data: { i: number } }[]);
    assert.ok(batches.every(Array.isArray), 'every line is a JSON array');
    assert.deepEqual(batches.flat().map((m) => m.data.i), Array.from({ length: 20 }, (_, i) => i));
    const before = stream.text().length;
    await stream.until((text) => text.length > before && text.slice(before).includes('[]\n'), 'heartbeat', 3500);
    stream.close();
  });

  it('answers a GET without a stream type with 405 and says what is accepted', async () => {
    const clientId = await handshake(t.url, ['http-streaming']);
    const response = await browserFetch(`${t.url}/${clientId}`);
    assert.equal(response.status, 405);
    assert.match(JSON.stringify(await response.json()), /text\/event-stream or application\/x-ndjson/);
  });
});

describe('a stream whose reader stops reading', () => {
  it('with maxBufferedBytes below the response\'s own buffer, is written again once it drains', { timeout: 30_000 }, async () => {
    // 1 KB unsent makes the line congested, while Node's response reports a drain only past 16 KB.
    const t = await startServer({ maxBufferedBytes: 1024, maxQueue: 20_000 });
    const abort = new AbortController();
    try {
      const clientId = await handshake(t.url, ['http-streaming']);
      await subscribe(t.url, clientId, '/nd/slow', 'http-streaming');
      const response = await browserFetch(`${t.url}/${clientId}`, { headers: { Accept: 'application/x-ndjson' }, signal: abort.signal });
      assert.equal(response.status, 200);
      // Nobody reads the body while 10 000 messages of 2 KB are published: once the buffers on
      // the way are full, the line is congested and the rest waits in the session's queue.
      const data = 'd'.repeat(2000);
      const count = 10_000;
      for (let i = 0; i < count; i++) await t.server.publish('/nd/slow', `${i}:${data}`);
      await new Promise((resolve) => setTimeout(resolve, 300));

      let text = '';
      const received = (): number[] =>
        text
          .split('\n')
          .filter((line) => line.startsWith('['))
          .flatMap((line) => JSON.parse(line) as { data?: string }[])
          .filter((m) => typeof m.data === 'string')
          .map((m) => Number(m.data!.split(':')[0]));
      readText(response.body!, (chunk) => (text += chunk), () => {});
      await waitFor(() => text.includes(`"${count - 1}:`) && text.endsWith('\n'), 10_000, () => `every message arrived (${received().length} of ${count})`);
      assert.deepEqual(received(), Array.from({ length: count }, (_, i) => i), 'each once, in the order published');
    } finally {
      abort.abort();
      await t.close();
    }
  });
});

describe('transport negotiation', () => {
  it('offers only the enabled types and refuses a disabled type with a clear error', async () => {
    const t = await startServer({ transports: ['websocket', 'long-polling'] });
    try {
      const { body } = await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling', 'eventsource'] }]);
      assert.deepEqual(body[0]?.supportedConnectionTypes, ['websocket', 'long-polling']);
      const clientId = body[0]?.clientId as string;
      const connect = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'eventsource', id: '1' }]);
      assert.equal(connect.body[0]?.successful, false);
      assert.match(String(connect.body[0]?.error), /^301:eventsource:.*offers websocket, long-polling/);
      const stream = await browserFetch(`${t.url}/${clientId}`, { headers: { Accept: 'text/event-stream' } });
      assert.equal(stream.status, 400);
      assert.match(JSON.stringify(await stream.json()), /eventsource is disabled/);
      const onlyEventSource = await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['eventsource'] }]);
      assert.match(String(onlyEventSource.body[0]?.error), /^301:/);
    } finally {
      await t.close();
    }
  });
});

describe('callback-polling (JSONP)', () => {
  const jsonp = (url: string, messages: unknown, callback?: string): Promise<Response> =>
    browserFetch(`${url}?${callback === undefined ? '' : `jsonp=${encodeURIComponent(callback)}&`}message=${encodeURIComponent(JSON.stringify(messages))}`);
  /** Runs the script body with a callback that records what it is called with. */
  const evaluate = (body: string, callback: string): unknown[] => {
    let received: unknown[] = [];
    new Function(callback, body)((batch: unknown[]) => (received = batch));
    return received;
  };

  it('is off by default, with an error that says how to enable it', async () => {
    const t = await startServer();
    try {
      const response = await jsonp(t.url, [{ channel: '/meta/handshake' }], 'cb');
      assert.equal(response.status, 400);
      assert.match(await response.text(), /callback-polling \(JSONP\) is disabled.*--jsonp/);
    } finally {
      await t.close();
    }
  });

  // Faye's browser client handshakes over JSONP whenever the server is on another origin.
  it('is on, while off for everyone else, for pages of the allowed origins (told by their Referer)', async () => {
    const t = await startServer({ allowedOrigins: ['https://app.example.com'] });
    const handshake = [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['callback-polling', 'cross-origin-long-polling', 'websocket'], id: '1' }];
    const from = (referer: string | undefined): Promise<Response> =>
      fetch(`${t.url}?jsonp=__jsonp1__&message=${encodeURIComponent(JSON.stringify(handshake))}`, { headers: referer === undefined ? {} : { Referer: referer } });
    try {
      const allowed = await from('https://app.example.com/rooms/1?x=y');
      assert.equal(allowed.status, 200);
      const [reply] = evaluate(await allowed.text(), '__jsonp1__') as { successful: boolean; supportedConnectionTypes: string[] }[];
      assert.equal(reply!.successful, true);
      assert.ok(!reply!.supportedConnectionTypes.includes('callback-polling'), 'the client is told to move to a transport the server offers');
      for (const referer of [undefined, 'https://evil.example.com/', 'https://app.example.com.evil.example/', 'http://app.example.com/', 'not a url', 'null']) {
        const refused = await from(referer);
        assert.equal(refused.status, 400, `Referer ${referer}`);
        assert.match(await refused.text(), /disabled.*--allowed-origins/);
      }
    } finally {
      await t.close();
    }
  });

  describe('when enabled', () => {
    let t: TestServer;
    before(async () => {
      t = await startServer({ jsonp: true, timeout: 2000 });
    });
    after(() => t.close());

    it('handshakes, subscribes and receives through /meta/connect, as script calling the callback', async () => {
      const hs = await jsonp(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['callback-polling'], id: '1' }], '_cometd_jsonp_1');
      assert.equal(hs.status, 200);
      assert.match(hs.headers.get('content-type') ?? '', /^text\/javascript/);
      assert.equal(hs.headers.get('x-content-type-options'), 'nosniff');
      const body = await hs.text();
      assert.match(body, /^\/\*\*\/_cometd_jsonp_1\(\[/);
      const [reply] = evaluate(body, '_cometd_jsonp_1') as { clientId: string; supportedConnectionTypes: string[] }[];
      assert.ok(reply!.supportedConnectionTypes.includes('callback-polling'));
      const clientId = reply!.clientId;
      const sub = evaluate(await (await jsonp(t.url, [
        { channel: '/meta/connect', clientId, connectionType: 'callback-polling', id: '2' },
        { channel: '/meta/subscribe', clientId, subscription: '/jp/a', id: '3' },
      ], '__jsonp2__')).text(), '__jsonp2__') as { successful: boolean }[];
      assert.deepEqual(sub.map((m) => m.successful), [true, true]);
      const held = jsonp(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'callback-polling', id: '4' }], 'cb');
      await new Promise((resolve) => setTimeout(resolve, 100));
      await t.server.publish('/jp/a', { text: 'line\u2028separator' });
      const response = await held;
      const text = await response.text();
      assert.ok(text.includes('\\u2028') && !text.includes('\u2028'), 'U+2028 escaped');
      const batch = evaluate(text, 'cb') as { channel: string; data?: { text: string } }[];
      assert.equal(batch[0]?.channel, '/meta/connect');
      assert.deepEqual(batch[1], { channel: '/jp/a', data: { text: 'line\u2028separator' }, ext: { position: (await t.server.history('/jp/a'))!.position } });
    });

    it('uses the default callback name when none is given', async () => {
      const body = await (await jsonp(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['callback-polling'] }])).text();
      assert.match(body, /^\/\*\*\/jsonpcallback\(/);
    });

    it('refuses a bad callback name with 400 and never reflects it', async () => {
      for (const name of ['alert(1)', '<script>', 'a b', '1x', 'x'.repeat(65)]) {
        const response = await jsonp(t.url, [{ channel: '/meta/handshake' }], name);
        assert.equal(response.status, 400, name);
        const text = await response.text();
        assert.ok(!text.includes(name), `${name} reflected`);
      }
    });

    it('answers malformed JSON in the message parameter with a Bayeux error through the callback', async () => {
      const response = await browserFetch(`${t.url}?jsonp=cb&message=${encodeURIComponent('[{')}`);
      const [reply] = evaluate(await response.text(), 'cb') as { successful: boolean; error: string }[];
      assert.equal(reply!.successful, false);
      assert.match(reply!.error, /^400:/);
    });
  });
});
