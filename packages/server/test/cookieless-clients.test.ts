/**
 * Bayeux clients that keep no cookies (curl scripts, plain HTTP clients in any language, Node's
 * EventSource, proxies that strip cookies) under the default settings: the clientId identifies
 * their session (Bayeux §clientId), over every HTTP transport. Every request here is a bare
 * fetch() that never sends a Cookie header.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from '../src/index.js';
import { readText, startServer, waitFor, type Msg, type TestServer } from './helpers.js';

const RULES = [{ channel: '/chat/**', publish: 'anyone' as const }];

/** POSTs a batch without cookies; fails unless the reply is HTTP 200 with a JSON array. */
async function postBare(url: string, batch: Msg[]): Promise<Msg[]> {
  const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(batch) });
  assert.equal(response.status, 200);
  return (await response.json()) as Msg[];
}

/** A callback-polling (JSONP) request without cookies, unwrapped to its array. */
async function jsonpBare(url: string, batch: Msg[]): Promise<Msg[]> {
  const response = await fetch(`${url}?jsonp=cb&message=${encodeURIComponent(JSON.stringify(batch))}`);
  assert.equal(response.status, 200);
  const text = await response.text();
  const match = /^\/\*\*\/cb\((.*)\);$/s.exec(text);
  assert.ok(match, `not a JSONP reply: ${text}`);
  return JSON.parse(match[1]!) as Msg[];
}

type Send = (url: string, batch: Msg[]) => Promise<Msg[]>;

function assertSuccessful(reply: Msg | undefined, what: string): void {
  assert.equal(reply?.successful, true, `${what} failed: ${JSON.stringify(reply)}`);
}

/** A cookie-less stream (SSE or ndjson) whose received Bayeux messages are collected in order. */
async function openBareStream(url: string, accept: string): Promise<{ messages: Msg[]; close(): void }> {
  const abort = new AbortController();
  const response = await fetch(url, { headers: { Accept: accept }, signal: abort.signal });
  assert.equal(response.status, 200, `the stream was refused: ${response.status}`);
  const messages: Msg[] = [];
  let buffer = '';
  readText(response.body!, (chunk) => {
    buffer += chunk;
    const lines = buffer.split('\n');
    buffer = lines.pop()!;
    for (const line of lines) {
      const json = accept === 'text/event-stream' ? (line.startsWith('data: ') ? line.slice(6) : '') : line.trim();
      if (json.startsWith('[')) messages.push(...(JSON.parse(json) as Msg[]));
    }
  });
  return { messages, close: () => abort.abort() };
}

function broadcasts(messages: Msg[]): Msg[] {
  return messages.filter((m) => m.successful === undefined && !String(m.channel).startsWith('/meta/'));
}

async function handshakeBare(send: Send, url: string, type: string): Promise<string> {
  const [reply] = await send(url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: [type], id: 'h' }]);
  assertSuccessful(reply, 'the handshake');
  return reply!.clientId as string;
}

describe('clients that keep no cookies, under the default session binding', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ open: false, jsonp: true, timeout: 2000, channels: RULES });
  });
  after(() => ts.close());

  for (const [type, send] of [['long-polling', postBare], ['callback-polling', jsonpBare]] as const) {
    it(`${type}: handshake, wildcard subscribe, publish, receive`, async () => {
      const clientId = await handshakeBare(send, ts.url, type);
      const replies = await send(ts.url, [
        { channel: '/meta/connect', clientId, connectionType: type, id: 'c1' },
        { channel: '/meta/subscribe', clientId, subscription: '/chat/**', id: 's1' },
      ]);
      assertSuccessful(replies[0], 'the first connect');
      assertSuccessful(replies[1], 'the subscribe');
      assertSuccessful((await send(ts.url, [{ channel: '/chat/room1', clientId, data: { from: 'me' }, id: 'p1' }]))[0], 'the publish');
      await ts.server.publish('/chat/room2/sub', { from: 'server' });
      const connect = await send(ts.url, [{ channel: '/meta/connect', clientId, connectionType: type, id: 'c2' }]);
      assertSuccessful(connect[0], 'the connect');
      assert.deepEqual(broadcasts(connect).map((m) => [m.channel, m.data]), [
        ['/chat/room1', { from: 'me' }],
        ['/chat/room2/sub', { from: 'server' }],
      ]);
    });
  }

  for (const [type, accept] of [['eventsource', 'text/event-stream'], ['http-streaming', 'application/x-ndjson']] as const) {
    it(`${type}: handshake, wildcard subscribe, open the stream, publish, receive`, async () => {
      const clientId = await handshakeBare(postBare, ts.url, type);
      const replies = await postBare(ts.url, [
        { channel: '/meta/connect', clientId, connectionType: type, id: 'c1' },
        { channel: '/meta/subscribe', clientId, subscription: '/chat/*', id: 's1' },
      ]);
      assertSuccessful(replies[1], 'the subscribe');
      const stream = await openBareStream(`${ts.url}/${clientId}`, accept);
      try {
        assertSuccessful((await postBare(ts.url, [{ channel: '/chat/room1', clientId, data: 1, id: 'p1' }]))[0], 'the publish');
        await ts.server.publish('/chat/room1', 2);
        await waitFor(() => broadcasts(stream.messages).length >= 2, 3000, 'both messages on the stream');
        assert.deepEqual(broadcasts(stream.messages).map((m) => m.data), [1, 2]);
        assertSuccessful((await postBare(ts.url, [{ channel: '/meta/connect', clientId, connectionType: type, id: 'c2' }]))[0], 'the next connect');
      } finally {
        stream.close();
      }
    });
  }

  it('a session whose client presented its cookie is refused to a cookie-less request from then on', async () => {
    const handshakeResponse = await fetch(ts.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], id: 'h' }]),
    });
    const cookie = /^BAYEUX_BROWSER=[^;]+/.exec(handshakeResponse.headers.get('set-cookie') ?? '')?.[0];
    assert.ok(cookie, 'the handshake reply set no BAYEUX_BROWSER cookie');
    const clientId = ((await handshakeResponse.json()) as Msg[])[0]!.clientId as string;
    const subscribe = (id: string, headers: Record<string, string>): Promise<Response> =>
      fetch(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify([{ channel: '/meta/subscribe', clientId, subscription: '/chat/x', id }]) });
    const withCookie = ((await (await subscribe('s1', { Cookie: cookie })).json()) as Msg[])[0];
    assertSuccessful(withCookie, 'the subscribe with the cookie');
    const without = ((await (await subscribe('s2', {})).json()) as Msg[])[0];
    assert.equal(without?.successful, false);
    assert.match(String(without?.error), /^402:/);
    const stream = await fetch(`${ts.url}/${clientId}`, { headers: { Accept: 'text/event-stream' } });
    const refused = await stream.text();
    assert.ok(refused.includes('"error":"402:') && !refused.includes('event: connected'), `a cookie-less stream opened for a bound session: ${refused}`);
  });

  it('the cookie has no SameSite attribute by default (old cookie parsers refuse it)', async () => {
    const response = await fetch(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
    const cookie = response.headers.get('set-cookie') ?? '';
    assert.match(cookie, /^BAYEUX_BROWSER=[A-Za-z0-9_-]{16,}; Path=\/bayeux; HttpOnly$/);
  });
});

describe('a client that keeps no cookies, across a server restart', () => {
  it('is told to handshake again by the new server, and its new session works', async () => {
    const options = { open: false, timeout: 2000, channels: RULES, pingInterval: 0, drainTimeout: 0 };
    let server = createServer(options);
    const { port } = await server.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${port}/bayeux`;
    try {
      const before = await handshakeBare(postBare, url, 'long-polling');
      assertSuccessful((await postBare(url, [{ channel: '/meta/connect', clientId: before, connectionType: 'long-polling', id: 'c1' }]))[0], 'the first connect');
      await server.close();
      server = createServer(options);
      await server.listen({ port, host: '127.0.0.1' });
      // The kept-alive connection to the old server is gone: like any client, try again once.
      const staleConnect = (): Promise<Msg[]> => postBare(url, [{ channel: '/meta/connect', clientId: before, connectionType: 'long-polling', id: 'c2' }]);
      const [stale] = await staleConnect().catch(staleConnect);
      assert.equal(stale?.successful, false);
      assert.match(String(stale?.error), /^402:/);
      assert.equal((stale?.advice as Msg | undefined)?.reconnect, 'handshake');
      const after = await handshakeBare(postBare, url, 'long-polling');
      const replies = await postBare(url, [
        { channel: '/meta/connect', clientId: after, connectionType: 'long-polling', id: 'c3' },
        { channel: '/meta/subscribe', clientId: after, subscription: '/chat/**', id: 's3' },
      ]);
      assertSuccessful(replies[1], 'the subscribe to the new server');
      await server.publish('/chat/again', 'after the restart');
      const connect = await postBare(url, [{ channel: '/meta/connect', clientId: after, connectionType: 'long-polling', id: 'c4' }]);
      assert.deepEqual(broadcasts(connect).map((m) => m.data), ['after the restart']);
    } finally {
      await server.close();
    }
  });
});

describe('cookieSameSite', () => {
  for (const [sameSite, expected] of [['lax', /; HttpOnly; SameSite=Lax$/], ['strict', /; HttpOnly; SameSite=Strict$/], ['none', /; HttpOnly; Secure; SameSite=None$/]] as const) {
    it(`"${sameSite}" sets the attribute`, async () => {
      const ts = await startServer({ cookieSameSite: sameSite });
      try {
        const response = await fetch(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
        assert.match(response.headers.get('set-cookie') ?? '', expected);
      } finally {
        await ts.close();
      }
    });
  }

  it('adds Secure behind a proxy that says the request came over HTTPS', async () => {
    const ts = await startServer({});
    try {
      const response = await fetch(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Forwarded-Proto': 'https' }, body: '[]' });
      assert.match(response.headers.get('set-cookie') ?? '', /; HttpOnly; Secure$/);
    } finally {
      await ts.close();
    }
  });
});

describe('cookiePath', () => {
  it('sets the Path of the cookie, and is checked as a path', async () => {
    const server = createServer({ cookiePath: '/realtime/bayeux/', drainTimeout: 0 });
    const { port } = await server.listen({ port: 0, host: '127.0.0.1' });
    try {
      const response = await fetch(`http://127.0.0.1:${port}/bayeux`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
      assert.match(response.headers.get('set-cookie') ?? '', /^BAYEUX_BROWSER=[A-Za-z0-9_-]{16,}; Path=\/realtime\/bayeux; HttpOnly$/);
    } finally {
      await server.close();
    }
    for (const bad of ['realtime', '/a b', '//x', '', 7]) {
      assert.throws(() => createServer({ cookiePath: bad as string }), /option "cookiePath" must be a URL path starting with "\/"/, String(bad));
    }
  });
});
