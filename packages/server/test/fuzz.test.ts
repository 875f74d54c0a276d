/**
 * Hostile input at every transport: random and mutated Bayeux messages, malformed JSON, deep
 * nesting, huge strings, and slow-drip requests. Throughout, a well-behaved client keeps making
 * full round trips, no request is answered with a 5xx, and memory stays bounded.
 *
 * The generator is seeded (FUZZ_SEED, printed on failure) so a failing run can be replayed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tcpConnect, type Socket } from 'node:net';
import WebSocket from 'ws';
import { browserFetch, handshake, post, startServer, waitFor, type TestServer } from './helpers.js';

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);

/** mulberry32: small, fast, seedable. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const random = rng(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
const int = (max: number): number => Math.floor(random() * max);

const CHANNELS = ['/meta/handshake', '/meta/connect', '/meta/subscribe', '/meta/unsubscribe', '/meta/disconnect', '/meta/foo', '/meta/subscribe/x', '/chat/a', '/a/*', '/a/**', '/service/x', '', '/', '//', 'nochannel', '/a/\u0000', `/${'x'.repeat(3000)}`, '/ü', '/a b', 42, null, {}, []];
const VALUES: unknown[] = [null, true, 0, -1, 1e308, 'x', '', '\u2028', '\ud800', [], {}, [[[]]], { a: { b: { c: 1 } } }, 'A'.repeat(5000)];

function randomString(max: number): string {
  let out = '';
  const length = int(max);
  for (let i = 0; i < length; i++) out += String.fromCharCode(int(0x2fff));
  return out;
}

function deep(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = random() < 0.5 ? [value] : { k: value };
  return value;
}

/** A message shaped like Bayeux with random holes, wrong types and odd values. */
function mutatedMessage(clientId: string): Record<string, unknown> {
  const message: Record<string, unknown> = {
    channel: pick(CHANNELS),
    id: pick<unknown>(['1', 2, 'x'.repeat(200), {}, null, undefined]),
    clientId: pick<unknown>([clientId, clientId, 'nope', 12, undefined, '']),
    data: random() < 0.2 ? deep(int(60)) : pick(VALUES),
    version: pick<unknown>(['1.0', '2.0', 1, undefined]),
    supportedConnectionTypes: pick<unknown>([['long-polling'], ['websocket'], [], 'x', [1, 2], undefined]),
    connectionType: pick<unknown>(['long-polling', 'websocket', 'eventsource', 'bogus', 7, undefined]),
    subscription: pick<unknown>(['/chat/a', ['/a', '/b'], [], ['/meta/**'], 5, '/**', undefined]),
    advice: pick<unknown>([{ timeout: 0 }, { timeout: -5 }, 'x', [], undefined]),
    ext: pick<unknown>([{}, { token: 'x' }, 'x', null, undefined]),
  };
  for (const key of Object.keys(message)) if (random() < 0.3) delete message[key];
  return message;
}

/** A request body: mostly broken JSON and mutated batches, sometimes plain noise. */
function hostileBody(clientId: string): string {
  const batch = Array.from({ length: 1 + int(4) }, () => mutatedMessage(clientId));
  const json = JSON.stringify(random() < 0.8 ? batch : batch[0]);
  switch (int(8)) {
    case 0:
      return json.slice(0, int(json.length)); // truncated
    case 1:
      return randomString(300); // noise
    case 2:
      return `${'['.repeat(2000)}${']'.repeat(2000)}`; // deep
    case 3:
      return JSON.stringify([{ channel: '/chat/a', clientId, data: 'z'.repeat(200_000) }]); // huge
    case 4:
      return `message=${encodeURIComponent(json)}`; // form
    default:
      return json;
  }
}

describe(`fuzzing every transport (FUZZ_SEED=${SEED})`, () => {
  let t: TestServer;
  const statuses = new Map<number, number>();
  let wellBehavedRounds = 0;
  let stopWellBehaved = false;
  let wellBehaved: Promise<void>;

  before(async () => {
    // Fuzzed handshakes make many sessions from one address; the per-address limit has its own test.
    t = await startServer({ jsonp: true, timeout: 200, maxRequestBytes: 64 * 1024, bodyTimeout: 500, heartbeat: 1000, maxSessionsPerIp: 0, maxWebsocketsPerIp: 0 });
    // A client that keeps doing handshake → subscribe → publish → receive while the rest is fuzzed.
    // The message is published before the connect that collects it, so slowness cannot race it.
    // One request first, so that this "browser" has its cookie before requests run in parallel.
    await handshake(t.url);
    wellBehaved = (async () => {
      while (!stopWellBehaved) {
        const clientId = await handshake(t.url);
        const channel = `/good/${wellBehavedRounds}`;
        await post(t.url, [
          { channel: '/meta/connect', clientId, connectionType: 'long-polling' },
          { channel: '/meta/subscribe', clientId, subscription: channel },
        ]);
        await post(t.url, [{ channel, clientId, data: { round: wellBehavedRounds } }]);
        const { body } = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
        assert.deepEqual(body.find((m) => m.channel === channel)?.data, { round: wellBehavedRounds }, `round ${wellBehavedRounds} (FUZZ_SEED=${SEED})`);
        await post(t.url, [{ channel: '/meta/disconnect', clientId }]);
        wellBehavedRounds++;
      }
    })();
    wellBehaved.catch(() => {}); // awaited (and reported) in after()
  });

  after(async () => {
    stopWellBehaved = true;
    await wellBehaved;
    await t.close();
  });

  it('answers hostile long-polling bodies with a 2xx or 4xx, never a 5xx', async () => {
    const clientId = await handshake(t.url);
    const rssBefore = process.memoryUsage().rss;
    for (let i = 0; i < 1500; i++) {
      const response = await browserFetch(t.url, {
        method: 'POST',
        headers: { 'Content-Type': pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded']) },
        body: hostileBody(clientId),
      });
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      const text = await response.text();
      assert.ok(response.status < 500, `HTTP ${response.status}: ${text.slice(0, 200)} (FUZZ_SEED=${SEED})`);
      if (response.status === 200) assert.ok(Array.isArray(JSON.parse(text)), 'a 200 carries a JSON array');
    }
    const grown = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
    assert.ok(grown < 200, `rss grew by ${grown.toFixed(0)} MiB`);
    assert.ok(wellBehavedRounds > 0, 'the well-behaved client kept working');
  });

  it('answers hostile WebSocket frames without crashing, and other sockets keep working', async () => {
    const good = new WebSocket(t.wsUrl);
    await new Promise((resolve) => good.once('open', resolve));
    let closedHostile = 0;
    for (let round = 0; round < 20; round++) {
      const ws = new WebSocket(t.wsUrl);
      ws.on('error', () => {});
      ws.on('close', () => closedHostile++);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      for (let i = 0; i < 50 && ws.readyState === WebSocket.OPEN; i++) {
        if (random() < 0.1) ws.send(Buffer.from(randomString(50)), { binary: true });
        else ws.send(hostileBody('nope'));
      }
      ws.close();
    }
    // The well-behaved socket still does a full exchange.
    const replies: unknown[] = [];
    good.on('message', (data) => replies.push(...(JSON.parse(String(data)) as unknown[])));
    good.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], id: 'ok' }]));
    await waitFor(() => replies.some((r) => (r as { id?: string }).id === 'ok'), 5000, 'a handshake reply on the good socket');
    good.close();
    await waitFor(() => closedHostile === 20, 5000, 'hostile sockets closed');
  });

  it('answers hostile JSONP and stream requests with a 2xx or 4xx, never reflecting a bad callback', async () => {
    for (let i = 0; i < 300; i++) {
      const callback = pick(['cb', '_cometd_jsonp_1', 'alert(1)', '<x>', randomString(20), 'a'.repeat(100)]);
      const url = `${t.url}?jsonp=${encodeURIComponent(callback)}&message=${encodeURIComponent(hostileBody('nope').slice(0, 4000))}`;
      const response = await browserFetch(url);
      const text = await response.text();
      assert.ok(response.status < 500, `JSONP HTTP ${response.status} (FUZZ_SEED=${SEED})`);
      if (response.status === 400 && callback.length > 2) assert.ok(!text.includes(callback), `reflected ${callback}`);
    }
    for (let i = 0; i < 100; i++) {
      const path = pick(['nope', randomString(10), '..', '%2e%2e', 'a'.repeat(500), '']);
      const accept = pick(['text/event-stream', 'application/x-ndjson', '*/*', '']);
      const response = await browserFetch(`${t.url}/${encodeURIComponent(path)}`, { headers: accept ? { Accept: accept } : {} });
      assert.ok(response.status < 500, `stream HTTP ${response.status} (FUZZ_SEED=${SEED})`);
      await response.body?.cancel();
    }
  });

  it('drops slow-drip bodies after bodyTimeout and keeps serving while they hang', async () => {
    const port = t.address.port;
    const sockets: Socket[] = [];
    const closed: boolean[] = [];
    for (let i = 0; i < 30; i++) {
      const socket = tcpConnect(port, '127.0.0.1');
      const index = sockets.push(socket) - 1;
      closed[index] = false;
      socket.on('error', () => {});
      socket.on('close', () => (closed[index] = true));
      socket.resume(); // read the answer, so that the server's close is seen
      socket.write(`POST ${new URL(t.url).pathname} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"chan`);
    }
    // While they hang, the server answers a real client.
    const clientId = await handshake(t.url);
    assert.match(clientId, /^\w+$/);
    await waitFor(() => closed.every(Boolean), 5000, 'slow-drip requests to be dropped');
    for (const socket of sockets) socket.destroy();
  });

  it('cuts a body dripped to an answer that did not read it (a 404, /health), and shuts down past one', { timeout: 30_000 }, async () => {
    // bodyTimeout 200 ms: a whole request must arrive within 6 × 200 ms + 5 s.
    const own = await startServer({ bodyTimeout: 200, drainTimeout: 0 });
    const port = own.address.port;
    const drip = (path: string): { closed: () => boolean; answer: () => string; stop: () => void } => {
      const socket = tcpConnect(port, '127.0.0.1');
      let closed = false;
      let answer = '';
      socket.on('error', () => {});
      socket.on('close', () => (closed = true));
      socket.on('data', (chunk) => (answer += String(chunk)));
      socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n`);
      const timer = setInterval(() => socket.write('x'), 100);
      socket.on('close', () => clearInterval(timer));
      return { closed: () => closed, answer: () => answer, stop: () => socket.destroy() };
    };
    const answered = (d: ReturnType<typeof drip>): boolean => /^HTTP\/1\.1 \d{3} /.test(d.answer());
    const drips: ReturnType<typeof drip>[] = [];
    try {
      const health = drip('/health');
      const nowhere = drip('/nowhere');
      drips.push(health, nowhere);
      await waitFor(() => answered(health) && answered(nowhere), 3000, () => `the answers: ${JSON.stringify([health.answer(), nowhere.answer()])}`);
      // Cut within the request's deadline (6.2 s, checked each second), though bytes keep coming.
      await waitFor(() => health.closed() && nowhere.closed(), 9000, 'the dripping connections to be cut');
      // Shut down with one dripping: close() returns soon after the drain, not when the drip ends.
      const late = drip('/health');
      drips.push(late);
      await waitFor(() => answered(late), 3000, 'the answer');
      const started = Date.now();
      await own.close();
      assert.ok(Date.now() - started < 3000, `close() took ${Date.now() - started} ms`);
      await waitFor(() => late.closed(), 1000, 'the dripping connection to be cut');
    } finally {
      for (const d of drips) d.stop();
      await own.close();
    }
  });
});
