/** The HTTP API for backends, the operations endpoints, and mounting in an existing server. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer } from '../src/index.js';
import { handshake, post, startServer, waitFor, type TestServer } from './helpers.js';

const KEY = 'test-api-key-0123456789';

async function api(t: TestServer, method: string, endpoint: string, body?: unknown, key: string | null = KEY, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const origin = `http://127.0.0.1:${t.address.port}`;
  const response = await fetch(`${origin}${endpoint}`, {
    method,
    headers: { ...(key !== null ? { Authorization: `Bearer ${key}` } : {}), 'Content-Type': 'application/json', ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null, headers: response.headers };
}

/** A raw long-polling client subscribed to `channel`, collecting what it receives. */
async function subscriber(t: TestServer, channel: string): Promise<{ clientId: string; next: () => Promise<Record<string, unknown>[]> }> {
  const clientId = await handshake(t.url);
  await post(t.url, [
    { channel: '/meta/connect', clientId, connectionType: 'long-polling' },
    { channel: '/meta/subscribe', clientId, subscription: channel },
  ]);
  return {
    clientId,
    next: async () => (await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }])).body.filter((m) => m.channel !== '/meta/connect'),
  };
}

describe('HTTP API', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ apiKey: KEY, open: false, timeout: 2000 });
  });
  after(() => t.close());

  it('refuses calls without the key, or with a wrong one, with 401', async () => {
    for (const key of [null, 'wrong-key-wrong-key-00', `${KEY}x`]) {
      const { status, json, headers } = await api(t, 'GET', '/api/stats', undefined, key);
      assert.equal(status, 401);
      assert.equal(json.error.code, 'unauthorized');
      assert.match(headers.get('www-authenticate') ?? '', /^Bearer/);
    }
  });

  it('publishes one message that reaches a browser-less subscriber', async () => {
    const sub = await subscriber(t, '/news/today');
    const { status, json } = await api(t, 'POST', '/api/publish', { channel: '/news/today', data: { headline: 'hello ☀' } });
    assert.equal(status, 200);
    assert.deepEqual(json, { published: 1 });
    const [message] = (await sub.next()) as Array<{ ext?: { position?: { offset: number } } }>;
    assert.equal(message?.ext?.position?.offset, 1);
    const { ext: _ext, ...rest } = message!;
    assert.deepEqual(rest, { channel: '/news/today', data: { headline: 'hello ☀' } });
  });

  it('publishes a batch in order, and nothing when one item is invalid', async () => {
    const sub = await subscriber(t, '/news/batch');
    const ok = await api(t, 'POST', '/api/publish', [1, 2, 3].map((n) => ({ channel: '/news/batch', data: n })));
    assert.deepEqual(ok.json, { published: 3 });
    assert.deepEqual((await sub.next()).map((m) => m.data), [1, 2, 3]);
    const bad = await api(t, 'POST', '/api/publish', [{ channel: '/news/batch', data: 4 }, { channel: 'oops', data: 5 }]);
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.code, 'invalid_channel');
    assert.match(bad.json.error.message, /^item 1: channel "oops"/);
    // Not even when the bad item is refused by a check of the server's own (a bare /meta).
    const meta = await api(t, 'POST', '/api/publish', [{ channel: '/news/batch', data: 4 }, { channel: '/meta', data: 5 }]);
    assert.equal(meta.status, 400);
    assert.equal(meta.json.error.code, 'invalid_channel');
    // Nothing from the refused batches was published: the next thing to arrive is the control message.
    await api(t, 'POST', '/api/publish', { channel: '/news/batch', data: 'control' });
    assert.deepEqual((await sub.next()).map((m) => m.data), ['control']);
  });

  it('publishes a call repeated with its Idempotency-Key once; a batch\'s items apart, so that a retry publishes what is missing', async () => {
    const sub = await subscriber(t, '/news/keyed');
    const keyed = (body: unknown, key: string): Promise<{ status: number; json: any }> => api(t, 'POST', '/api/publish', body, KEY, { 'Idempotency-Key': key });
    assert.deepEqual((await keyed({ channel: '/news/keyed', data: 1 }, 'k-1')).json, { published: 1, repeated: 0 });
    assert.deepEqual((await keyed({ channel: '/news/keyed', data: 'retry' }, 'k-1')).json, { published: 0, repeated: 1 }, 'the retry');
    // The draft standard's form, a quoted string, is the same key.
    assert.deepEqual((await keyed({ channel: '/news/keyed', data: 'retry' }, '"k-1"')).json, { published: 0, repeated: 1 });
    assert.deepEqual((await keyed({ channel: '/news/keyed', data: 2 }, 'k-2')).json, { published: 1, repeated: 0 });
    // A batch whose first two items went out before a failure: its retry publishes the third.
    await t.server.publish('/news/keyed', 3, { idempotencyKey: 'batch' });
    await t.server.publish('/news/keyed', 4, { idempotencyKey: 'batch#1' });
    const batch = [3, 4, 5].map((n) => ({ channel: '/news/keyed', data: n }));
    assert.deepEqual((await keyed(batch, 'batch')).json, { published: 1, repeated: 2 });
    assert.deepEqual((await keyed(batch, 'batch')).json, { published: 0, repeated: 3 });
    // Without a key nothing is recognised, as before.
    assert.deepEqual((await api(t, 'POST', '/api/publish', { channel: '/news/keyed', data: 6 })).json, { published: 1 });
    assert.deepEqual((await api(t, 'POST', '/api/publish', { channel: '/news/keyed', data: 6 })).json, { published: 1 });
    assert.deepEqual((await sub.next()).map((m) => m.data), [1, 2, 3, 4, 5, 6, 6]);
    assert.equal(await t.server.publish('/news/keyed', 'in process', { idempotencyKey: 'k-2' }), false, 'server.publish shares the keys');
    // Keys that cannot serve are refused before anything is published.
    for (const [key, items] of [['', 1], ['with space', 1], ['é', 1], ['x'.repeat(256), 1], ['x'.repeat(254), 20]] as const) {
      const bad = await keyed(Array.from({ length: items }, () => ({ channel: '/news/keyed', data: 'bad' })), key);
      assert.equal(bad.status, 400, JSON.stringify(key));
      assert.equal(bad.json.error.code, 'invalid_request');
      assert.match(bad.json.error.message, /^Idempotency-Key must be 1 to 255 visible ASCII characters/);
    }
    await assert.rejects(t.server.publish('/news/keyed', 'x', { idempotencyKey: 'a b' }), { code: 'ERR_INVALID_ARGUMENT' });
    await api(t, 'POST', '/api/publish', { channel: '/news/keyed', data: 'control' });
    assert.deepEqual((await sub.next()).map((m) => m.data), ['control']);
  });

  it('answers each malformed publish with a code and a message', async () => {
    const cases: [unknown, number, string][] = [
      ['{not json', 400, 'invalid_json'],
      [{ channel: '/a/*', data: 1 }, 400, 'invalid_channel'],
      [{ channel: '/meta/connect', data: 1 }, 400, 'invalid_channel'],
      [{ channel: '/meta', data: 1 }, 400, 'invalid_channel'],
      // Nested past maxDepth (32): refused before parsing; 20 000 levels overflowed the serialiser's stack (a 500).
      [`{"channel":"/a","data":${'['.repeat(20_000)}${']'.repeat(20_000)}}`, 400, 'invalid_json'],
      [{ channel: '/a', data: JSON.parse(`${'['.repeat(31)}${']'.repeat(31)}`) }, 200, ''],
      [{ channel: '/a' }, 400, 'invalid_request'],
      [{ channel: '/a', data: 1, ext: 'x' }, 400, 'invalid_request'],
      [[], 400, 'invalid_request'],
      [42, 400, 'invalid_request'],
    ];
    for (const [body, status, code] of cases) {
      const { status: got, json } = await api(t, 'POST', '/api/publish', body);
      const what = JSON.stringify(body).slice(0, 80);
      assert.equal(got, status, what);
      if (status === 200) continue;
      assert.equal(json.error.code, code, what);
      assert.equal(typeof json.error.message, 'string');
    }
    const big = await api(t, 'POST', '/api/publish', { channel: '/a', data: 'x'.repeat(2 * 1024 * 1024) });
    assert.equal(big.status, 413);
    assert.equal(big.json.error.code, 'too_large');
  });

  it('applies maxMessageBytes to what it publishes and delivers, as to clients: 413 too_large, and a batch with one too large is refused whole', async () => {
    const limit = t.server.options.maxMessageBytes;
    assert.ok(limit < t.server.options.maxRequestBytes, 'the body fits; the message does not');
    const sub = await subscriber(t, '/news/large');
    const tooLarge = 'x'.repeat(600_000);
    const one = await api(t, 'POST', '/api/publish', { channel: '/news/large', data: tooLarge });
    assert.equal(one.status, 413);
    assert.equal(one.json.error.code, 'too_large');
    assert.match(one.json.error.message, new RegExp(`larger than ${limit} bytes \\(maxMessageBytes\\)`));
    // Bytes, not characters: 200 000 three-byte characters are 600 000 bytes.
    const wide = await api(t, 'POST', '/api/publish', { channel: '/news/large', data: '☀'.repeat(200_000) });
    assert.equal(wide.status, 413);
    const batch = await api(t, 'POST', '/api/publish', [{ channel: '/news/large', data: 'small' }, { channel: '/news/large', data: tooLarge }]);
    assert.equal(batch.status, 413);
    assert.equal(batch.json.error.code, 'too_large');
    assert.match(batch.json.error.message, /^item 1: the message is larger than/);
    // Under the limit it goes through; nothing of the refused ones was published before it.
    const fits = 'y'.repeat(limit - 100);
    assert.equal((await api(t, 'POST', '/api/publish', { channel: '/news/large', data: fits })).status, 200);
    assert.deepEqual((await sub.next()).map((m) => m.data), [fits]);
    const delivered = await api(t, 'POST', '/api/deliver', { clientId: sub.clientId, channel: '/private/large', data: tooLarge });
    assert.equal(delivered.status, 413);
    assert.equal(delivered.json.error.code, 'too_large');
    await api(t, 'POST', '/api/deliver', { clientId: sub.clientId, channel: '/private/large', data: 'control' });
    assert.deepEqual((await sub.next()).map((m) => m.data), ['control']);
  });

  it('delivers to one session, and says when the session does not exist', async () => {
    const target = await subscriber(t, '/unused');
    const other = await subscriber(t, '/unused2');
    const { json } = await api(t, 'POST', '/api/deliver', { clientId: target.clientId, channel: '/private/note', data: 'just you' });
    assert.deepEqual(json, { delivered: true });
    assert.deepEqual(await target.next(), [{ channel: '/private/note', data: 'just you' }]);
    await api(t, 'POST', '/api/deliver', { clientId: other.clientId, channel: '/private/note', data: 'control' });
    assert.deepEqual((await other.next()).map((m) => m.data), ['control'], 'the other session got only its own message');
    const missing = await api(t, 'POST', '/api/deliver', { clientId: 'nosuch', channel: '/x', data: 1 });
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.code, 'session_not_found');
    assert.equal((await api(t, 'POST', '/api/deliver', { channel: '/x', data: 1 })).json.error.code, 'invalid_request');
    for (const channel of ['/meta/connect', '/meta']) {
      const meta = await api(t, 'POST', '/api/deliver', { clientId: target.clientId, channel, data: 1 });
      assert.equal(meta.status, 400, channel);
      assert.equal(meta.json.error.code, 'invalid_channel', channel);
    }
  });

  it('delivers a call repeated with its Idempotency-Key once, answering it as the first', async () => {
    const target = await subscriber(t, '/unused3');
    const keyed = (clientId: string, data: unknown, key: string): Promise<{ status: number; json: any }> => api(t, 'POST', '/api/deliver', { clientId, channel: '/private/keyed', data }, KEY, { 'Idempotency-Key': key });
    assert.deepEqual((await keyed(target.clientId, 'shipped', 'note-1')).json, { delivered: true });
    assert.deepEqual((await keyed(target.clientId, 'shipped', 'note-1')).json, { delivered: true }, 'the retry');
    assert.equal(await t.server.deliver(target.clientId, '/private/keyed', 'shipped', { idempotencyKey: 'note-1' }), true, 'server.deliver shares the keys');
    // A key that reached no session is not kept; the keys of publishes are others.
    assert.equal((await keyed('nosuch', 'x', 'note-2')).status, 404);
    await t.server.publish('/elsewhere', 1, { idempotencyKey: 'note-3' });
    assert.deepEqual((await keyed(target.clientId, 'after', 'note-3')).json, { delivered: true });
    assert.deepEqual((await target.next()).map((m) => m.data), ['shipped', 'after']);
    const bad = await keyed(target.clientId, 'x', 'no spaces');
    assert.equal(bad.status, 400);
    assert.match(bad.json.error.message, /^Idempotency-Key must be 1 to 255 visible ASCII characters/);
  });

  it('lists channels with subscriber counts, and presence of a channel', async () => {
    const a = await subscriber(t, '/room/1');
    const b = await subscriber(t, '/room/1');
    const { json } = await api(t, 'GET', '/api/channels');
    assert.deepEqual(json.channels.find((c: { channel: string }) => c.channel === '/room/1'), { channel: '/room/1', subscribers: 2 });
    const presence = await api(t, 'GET', `/api/presence?channel=${encodeURIComponent('/room/1')}`);
    assert.deepEqual(presence.json.sessions.map((s: { clientId: string }) => s.clientId).sort(), [a.clientId, b.clientId].sort());
    assert.equal(presence.json.sessions[0].user, null, 'anonymous sessions have no user');
    assert.equal((await api(t, 'GET', '/api/presence?channel=bad')).json.error.code, 'invalid_channel');
    assert.equal((await api(t, 'GET', '/api/presence')).status, 400);
  });

  it('disconnects a session, after which its clientId is unknown', async () => {
    const victim = await subscriber(t, '/x');
    const { json } = await api(t, 'POST', '/api/disconnect', { clientId: victim.clientId });
    assert.deepEqual(json, { disconnected: 1 });
    const { body } = await post(t.url, [{ channel: '/meta/connect', clientId: victim.clientId, connectionType: 'long-polling' }]);
    assert.match(String(body[0]?.error), /^402:/);
    assert.equal((await api(t, 'POST', '/api/disconnect', { clientId: victim.clientId })).status, 404);
    assert.deepEqual((await api(t, 'POST', '/api/disconnect', { user: 'nobody-here' })).json, { disconnected: 0 });
    assert.equal((await api(t, 'POST', '/api/disconnect', {})).json.error.code, 'invalid_request');
  });

  it('reports stats with sessions by transport', async () => {
    await subscriber(t, '/stats');
    const { json } = await api(t, 'GET', '/api/stats');
    assert.ok(json.sessions >= 1);
    assert.ok(json.sessionsByTransport['long-polling'] >= 1);
    assert.equal(typeof json.published, 'number');
    assert.equal(typeof json.history.messages, 'number');
    assert.equal(typeof json.replayed, 'number');
  });

  it('reads a channel\'s history: the latest messages, or those after a position', async () => {
    for (let i = 1; i <= 3; i++) await api(t, 'POST', '/api/publish', { channel: '/hist/a', data: { i } });
    const latest = await api(t, 'GET', '/api/history?channel=/hist/a&limit=2');
    assert.equal(latest.status, 200);
    assert.equal(latest.json.channel, '/hist/a');
    assert.deepEqual(latest.json.messages.map((m: { data: unknown }) => m.data), [{ i: 2 }, { i: 3 }]);
    assert.equal(latest.json.complete, true);
    const { epoch, offset } = latest.json.position;
    assert.equal(offset, 3);
    const since = await api(t, 'GET', `/api/history?channel=/hist/a&since=${epoch}:1`);
    assert.deepEqual(since.json.messages.map((m: { ext: { position: { offset: number } } }) => m.ext.position.offset), [2, 3]);
    const stale = await api(t, 'GET', `/api/history?channel=/hist/a&since=other:1`);
    assert.deepEqual([stale.status, stale.json.messages, stale.json.complete], [200, [], false]);
    const none = await api(t, 'GET', '/api/history?channel=/hist/none');
    assert.deepEqual(none.json, { channel: '/hist/none', position: null, messages: [], complete: true });
  });

  it('answers bad history queries with a code and a message', async () => {
    const cases: Array<[string, number, string, RegExp]> = [
      ['/api/history', 400, 'invalid_channel', /channel/],
      ['/api/history?channel=/a/*', 400, 'invalid_channel', /wildcard|segment/],
      ['/api/history?channel=/a&since=nope', 400, 'invalid_request', /"epoch:offset"/],
      ['/api/history?channel=/a&limit=-1', 400, 'invalid_request', /whole number/],
      ['/api/history?channel=/service/x', 404, 'no_history', /keeps no history/],
    ];
    for (const [endpoint, status, code, message] of cases) {
      const { status: got, json } = await api(t, 'GET', endpoint);
      assert.equal(got, status, endpoint);
      assert.equal(json.error.code, code, endpoint);
      assert.match(json.error.message, message, endpoint);
    }
    const wrong = await api(t, 'POST', '/api/history?channel=/a', {});
    assert.equal(wrong.status, 405);
  });

  it('answers unknown endpoints with 404 and wrong methods with 405', async () => {
    const unknown = await api(t, 'GET', '/api/nope');
    assert.equal(unknown.status, 404);
    assert.match(unknown.json.error.message, /\/api\/publish/);
    for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      const inherited = await api(t, 'GET', `/api/${name}`);
      assert.equal(inherited.status, 404, name);
      assert.equal(inherited.json.error.code, 'not_found', name);
    }
    const wrong = await api(t, 'GET', '/api/publish');
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get('allow'), 'POST');
    // HEAD is GET without the body.
    const head = await api(t, 'HEAD', '/api/channels');
    assert.equal(head.status, 200);
    assert.equal(head.json, null, 'no body');
    const posted = await api(t, 'POST', '/api/channels', {});
    assert.equal(posted.headers.get('allow'), 'GET, HEAD');
  });

  it('says a publish without a channel lacks one', async () => {
    const missing = await api(t, 'POST', '/api/publish', { data: 1 });
    assert.equal(missing.status, 400);
    assert.deepEqual([missing.json.error.code, missing.json.error.message], ['invalid_request', '"channel" is required']);
  });
});

describe('idempotency keys, by the options', () => {
  it('are remembered idempotencyWindow ms, the latest idempotencyKeys of them', async () => {
    const t = await startServer({ apiKey: KEY, idempotencyWindow: 1000, idempotencyKeys: 2 });
    try {
      const keyed = async (key: string): Promise<unknown> => (await api(t, 'POST', '/api/publish', { channel: '/news/window', data: key }, KEY, { 'Idempotency-Key': key })).json;
      assert.deepEqual(await keyed('a'), { published: 1, repeated: 0 });
      assert.deepEqual(await keyed('b'), { published: 1, repeated: 0 });
      assert.deepEqual(await keyed('a'), { published: 0, repeated: 1 });
      assert.deepEqual(await keyed('c'), { published: 1, repeated: 0 });
      assert.deepEqual(await keyed('a'), { published: 1, repeated: 0 }, 'past the 2 latest keys');
      await new Promise((resolve) => setTimeout(resolve, 1100));
      assert.deepEqual(await keyed('c'), { published: 1, repeated: 0 }, 'past the window');
    } finally {
      await t.close();
    }
    assert.throws(() => createServer({ idempotencyWindow: 10 }), /option "idempotencyWindow" must be an integer from 1000 to 604800000, got 10/);
  });
});

describe('the HTTP API without a key', () => {
  it('is off, and says how to turn it on', async () => {
    const t = await startServer();
    try {
      const { status, json } = await api(t, 'POST', '/api/publish', { channel: '/a', data: 1 });
      assert.equal(status, 404);
      assert.equal(json.error.code, 'api_disabled');
      assert.match(json.error.message, /PERIHELION_API_KEY/);
    } finally {
      await t.close();
    }
  });

  it('refuses a short key at start', () => {
    assert.throws(() => createServer({ apiKey: 'short' }), /"apiKey" must be a string of at least 16 characters/);
  });
});

describe('operations endpoints', () => {
  it('serve /health, /ready (503 once shutting down) and Prometheus /metrics', async () => {
    // Without presence events, which would be published (and kept) too.
    const t = await startServer({ presence: false });
    try {
      const origin = `http://127.0.0.1:${t.address.port}`;
      assert.deepEqual(await (await fetch(`${origin}/health`)).json(), { status: 'ok' });
      await waitFor(() => t.server.isReady, 2000, 'engine ready');
      assert.equal((await fetch(`${origin}/ready`)).status, 200);
      const sub = await subscriber(t, '/m');
      await t.server.publish('/m', 1);
      await sub.next();
      const metrics = await (await fetch(`${origin}/metrics`)).text();
      assert.match(metrics, /^perihelion_sessions\{transport="long-polling"\} 1$/m);
      assert.match(metrics, /^perihelion_messages_published_total 1$/m);
      assert.match(metrics, /^perihelion_deliveries_total 1$/m);
      assert.match(metrics, /^perihelion_subscriptions 1$/m);
      assert.match(metrics, /^perihelion_delivery_latency_seconds_count 1$/m);
      assert.match(metrics, /^# TYPE perihelion_delivery_latency_seconds histogram$/m);
      assert.match(metrics, /^perihelion_delivery_latency_seconds_bucket\{le="\+Inf"\} 1$/m);
      assert.match(metrics, /^perihelion_delivery_latency_seconds_bucket\{le="30"\} 1$/m, 'buckets are cumulative');
      assert.match(metrics, /^perihelion_history_messages 1$/m);
      assert.match(metrics, /^perihelion_history_channels 1$/m);
      assert.match(metrics, /^perihelion_queue_drops_total 0$/m);
      assert.match(metrics, /^perihelion_duplicate_publishes_total 0$/m);
      // The process's descriptors (every connection is one) and memory.
      const gauge = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1]);
      assert.ok(gauge('process_resident_memory_bytes') > 1_000_000);
      if (process.platform === 'linux') {
        assert.ok(gauge('process_open_fds') >= 3, `process_open_fds: ${gauge('process_open_fds')}`);
        assert.ok(gauge('process_max_fds') >= gauge('process_open_fds'), 'process_max_fds');
      }
    } finally {
      // While closing, readiness fails so that load balancers send new clients elsewhere.
      const closing = t.server.close();
      assert.equal(t.server.isReady, false);
      await closing;
    }
  });
});

describe('attach() to an existing node:http server', () => {
  it('answers its own paths and leaves the others to the application', async () => {
    const app = createHttpServer((req, res) => res.end(`app:${req.url}`));
    const bayeux = createServer({ pingInterval: 0 }).attach(app);
    await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
    const origin = `http://127.0.0.1:${(app.address() as AddressInfo).port}`;
    try {
      assert.equal(await (await fetch(`${origin}/hello`)).text(), 'app:/hello');
      const clientId = await handshake(`${origin}/bayeux`);
      assert.match(clientId, /^\w+$/);
      assert.deepEqual(await (await fetch(`${origin}/health`)).json(), { status: 'ok' });
    } finally {
      await bayeux.close();
      app.closeAllConnections();
      await new Promise((resolve) => app.close(resolve));
    }
  });
});
