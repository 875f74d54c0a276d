/**
 * The overload policy (core/load-guard.ts) and the per-address subscription budget: driven past
 * each limit, the server refuses new work with 503 and advice, /ready turns 503, existing
 * sessions go on, and everything comes back once the load goes.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WsPeer, coreOf, post, startServer, waitFor, type Msg, type TestServer } from './helpers.js';

const servers: TestServer[] = [];
const peers: WsPeer[] = [];
afterEach(async () => {
  await Promise.all(peers.splice(0).map((peer) => peer.close()));
  await Promise.all(servers.splice(0).map((t) => t.close()));
});

async function start(options: Parameters<typeof startServer>[0]): Promise<TestServer> {
  const t = await startServer({ maxSessionsPerIp: 0, maxWebsocketsPerIp: 0, ...options });
  servers.push(t);
  return t;
}

async function handshake(t: TestServer): Promise<Msg> {
  const { body } = await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
  return body[0] as Msg;
}

async function ready(t: TestServer): Promise<{ status: number; body: Msg }> {
  const response = await fetch(`http://127.0.0.1:${t.address.port}/ready`);
  return { status: response.status, body: (await response.json()) as Msg };
}

describe('overload policy', () => {
  it('refuses handshakes past maxSessions with 503 and advice, says so on /ready, and takes them again once a session goes', async () => {
    const t = await start({ maxSessions: 2 });
    const first = await handshake(t);
    const second = await handshake(t);
    assert.equal(first.successful && second.successful, true);
    const refused = await handshake(t);
    assert.equal(refused.successful, false);
    assert.match(String(refused.error), /^503::Server overloaded: at most 2 sessions/);
    assert.deepEqual(refused.advice, { interval: 5000 });
    assert.deepEqual(await ready(t), { status: 503, body: { status: 'overloaded', reason: 'at most 2 sessions on this server' } });
    // The sessions already there go on.
    const { body } = await post(t.url, [{ channel: '/meta/subscribe', clientId: first.clientId, subscription: '/a' }]);
    assert.equal((body[0] as Msg).successful, true);
    await post(t.url, [{ channel: '/meta/disconnect', clientId: second.clientId }]);
    assert.equal((await handshake(t)).successful, true, 'room again');
    assert.equal((await ready(t)).status, 503, 'full again');
  });

  it('past maxMemory refuses handshakes and client publishes, keeps delivering, and recovers when memory goes down', async () => {
    const t = await start({ maxMemory: 4096 });
    const load = coreOf(t.server).load;
    // The test gives the readings: no sampling of the real memory meanwhile.
    load.stop();
    load.sample(100 * 1024 * 1024);
    const reader = await WsPeer.open(t.wsUrl);
    peers.push(reader);
    const hs = await reader.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
    const clientId = hs.clientId as string;
    await reader.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    reader.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
    await reader.request({ channel: '/meta/subscribe', clientId, subscription: '/news' });

    load.sample(4097 * 1024 * 1024);
    const refused = await handshake(t);
    assert.match(String(refused.error), /^503::Server overloaded: memory past its limit \(4097 MB of 4096 MB\)/);
    const publish = await reader.request({ channel: '/news', clientId, data: 'from a client' });
    assert.equal(publish.successful, false);
    assert.match(String(publish.error), /^503:\/news:Server overloaded/);
    assert.equal((await ready(t)).status, 503);
    await t.server.publish('/news', 'from the server');
    await waitFor(() => reader.received.some((m) => m.data === 'from the server'), 3000, 'delivery to an existing session');

    load.sample(10 * 1024 * 1024);
    assert.equal((await handshake(t)).successful, true);
    assert.equal((await reader.request({ channel: '/news', clientId, data: 'again' })).successful, true);
    assert.deepEqual(await ready(t), { status: 200, body: { status: 'ready' } });
  });

  it('with every descriptor in use (memory unreadable), believes memory up from what V8 holds, never down', async () => {
    // A watermark of 1 MB: V8's own heap alone is past it.
    const t = await start({ maxMemory: 1 });
    const load = coreOf(t.server).load;
    load.stop();
    const emfile = (): number => {
      throw Object.assign(new Error('EMFILE: too many open files, open /proc/self/stat'), { code: 'EMFILE' });
    };
    load.sample(512 * 1024);
    assert.equal(load.refusesPublishes(), null, 'half a megabyte read last');
    // The read fails: the heap V8 holds (more than 1 MB) stands in, upwards.
    load.readMemory(emfile);
    assert.match(String(load.refusesPublishes()), /^memory past its limit/);
    // A higher reading made before the failure is not lowered by it.
    load.sample(10_000 * 1024 * 1024);
    load.readMemory(emfile);
    assert.match(String(load.refusesPublishes()), /\(10000 MB of 1 MB\)/);
    // A read that succeeds again is believed, down too.
    load.readMemory(() => 512 * 1024);
    assert.equal(load.refusesPublishes(), null);
  });

  it('defaults the memory watermark to the V8 heap limit', async () => {
    const t = await start({});
    const limit = coreOf(t.server).load.memoryLimitBytes;
    const { getHeapStatistics } = await import('node:v8');
    assert.equal(limit, Math.floor(getHeapStatistics().heap_size_limit / 1024 / 1024) * 1024 * 1024);
  });
});

describe('subscription budget per address', () => {
  it('refuses a subscribe that would take one address past maxSubscriptionsPerIp, across its sessions, and frees it as they go', async () => {
    const t = await start({ maxSubscriptionsPerIp: 50 });
    const a = (await handshake(t)).clientId as string;
    const b = (await handshake(t)).clientId as string;
    const subscribe = async (clientId: string, channels: string[]): Promise<Msg> => (await post(t.url, [{ channel: '/meta/subscribe', clientId, subscription: channels }])).body[0] as Msg;
    const names = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `/${prefix}/${i}`);
    assert.equal((await subscribe(a, names('a', 30))).successful, true);
    const refused = await subscribe(b, names('b', 30));
    assert.equal(refused.successful, false);
    assert.match(String(refused.error), /^409::Too many subscriptions: at most 50 subscriptions per address/);
    assert.equal((await subscribe(b, names('b', 20))).successful, true, 'up to the budget');
    assert.equal((await subscribe(b, ['/b/0'])).successful, true, 'subscribing again costs nothing');
    await post(t.url, [{ channel: '/meta/unsubscribe', clientId: a, subscription: names('a', 10) }]);
    assert.equal((await subscribe(b, names('c', 10))).successful, true, 'unsubscribing frees the budget');
    await post(t.url, [{ channel: '/meta/disconnect', clientId: a }]);
    assert.equal((await subscribe(b, names('d', 20))).successful, true, 'a session that ends frees its share');
  });

  it('bounds what one hostile address can hold under the defaults', async () => {
    // The attack measured in the issue: many sessions from one address, each subscribing to many
    // long channel names. The default budget stops it at 20 000 subscriptions (about 20 MB).
    const t = await start({});
    const long = 'x'.repeat(110);
    let accepted = 0;
    let refusedAt = -1;
    for (let session = 0; session < 30 && refusedAt < 0; session++) {
      const clientId = (await handshake(t)).clientId as string;
      const reply = (await post(t.url, [{ channel: '/meta/subscribe', clientId, subscription: Array.from({ length: 1000 }, (_, i) => `/${long}/${session}/${i}`) }])).body[0] as Msg;
      if (reply.successful) accepted += 1000;
      else refusedAt = session;
    }
    assert.equal(accepted, 20_000);
    assert.equal(refusedAt, 20);
  });
});
