/**
 * The Redis engine against the shared conformance suite, alone and as two nodes of one cluster;
 * once more with the channels split into partitions (as on a Redis Cluster, here on one Redis).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { PerihelionError, RedisEngine } from '../src/index.js';
import { Redis } from 'ioredis';
import { distributedEngineConformance, engineConformance, publication, RecordingHost, type EngineFixture } from './engine-conformance.js';
import { freePort, waitFor } from './helpers.js';
import { REDIS_URL, deleteKeys, keysUnder, lruCase, requireRedis, startRedis, uniquePrefix } from './redis-fixture.js';

before(requireRedis);

function fixture(label: string, partitions = 1): EngineFixture {
  let prefix = uniquePrefix(label);
  return {
    create: () => new RedisEngine({ url: REDIS_URL, prefix, partitions }),
    lru: lruCase(partitions),
    reset: async () => {
      await deleteKeys(prefix);
      prefix = uniquePrefix(label);
    },
  };
}

engineConformance('redis', fixture('conformance'));
distributedEngineConformance('redis', fixture('distributed'));
engineConformance('redis, 4 partitions', fixture('partitioned', 4));
distributedEngineConformance('redis, 4 partitions', fixture('partitioned-distributed', 4));

describe('redis engine: partitions on one Redis', () => {
  it('refuses to start a node that counts the partitions differently from the live nodes, whichever started first', async () => {
    for (const [first, second] of [
      [1, 4],
      [4, 1],
    ] as const) {
      const prefix = uniquePrefix('layout');
      const live = new RedisEngine({ url: REDIS_URL, prefix, partitions: first });
      await live.start(new RecordingHost());
      try {
        const other = new RedisEngine({ url: REDIS_URL, prefix, partitions: second });
        await assert.rejects(other.start(new RecordingHost()), (error: PerihelionError) => {
          assert.equal(error.code, 'ERR_ENGINE_UNAVAILABLE');
          assert.match(error.message, new RegExp(`live nodes of this cluster .* use ${first} partitions and this node ${second}`));
          return true;
        });
      } finally {
        await live.close();
        await deleteKeys(prefix);
      }
    }
  });
});

describe("redis engine: clients' publish ids", () => {
  it("keeps a client's latest `keep` ids in one compact set that expires, whatever the number published", async () => {
    const prefix = uniquePrefix('once');
    const engine = new RedisEngine({ url: REDIS_URL, prefix });
    await engine.start(new RecordingHost());
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
    try {
      for (let n = 1; n <= 300; n++) assert.equal(await engine.publish({ ...publication('/ids', n), once: { client: 'ann', id: String(n), keep: 128, forMs: 60_000 } }), true);
      const [key] = (await keysUnder(prefix)).filter((name) => name.endsWith('once:ann'));
      assert.ok(key, 'the set of the client');
      assert.equal(await redis.zcard(key), 128);
      assert.deepEqual(await redis.zrange(key, '0', '0'), ['173'], 'the oldest kept: the 128th before the last');
      assert.equal(await redis.object('ENCODING', key), 'listpack', 'compact: never past 128 entries');
      const ttl = await redis.pttl(key);
      assert.ok(ttl > 50_000 && ttl <= 60_000, `expires in forMs (${ttl} ms)`);
      assert.equal(await engine.publish({ ...publication('/ids', 'again'), once: { client: 'ann', id: '300', keep: 128, forMs: 60_000 } }), false);
      assert.equal(await engine.publish({ ...publication('/ids', 'again'), once: { client: 'ann', id: '172', keep: 128, forMs: 60_000 } }), true, 'no longer kept');
    } finally {
      redis.disconnect();
      await engine.close();
      await deleteKeys(prefix);
    }
  });
});

describe('redis engine: catching up after the bus was lost', () => {
  it('does not end a catch-up with a read made while deaf again: what is published before the bus is back is still read', async () => {
    // The order chaos found: a read failed and its retry was due; the bus was lost again; the
    // retry read (nothing new yet) and ended the catch-up; what the other node published before
    // this one subscribed again was then neither read nor heard.
    const prefix = uniquePrefix('deaf-retry');
    const a = new RedisEngine({ url: REDIS_URL, prefix });
    const b = new RedisEngine({ url: REDIS_URL, prefix });
    const hostA = new RecordingHost();
    const hostB = new RecordingHost();
    await a.start(hostA);
    await b.start(hostB);
    type Inside = {
      connection: { hearing: boolean };
      onMessage(channel: string, text: string): void;
      echoesLost(): void;
      catchUpLater(tried: number): void;
      catchingUp: Promise<void>;
    };
    const inside = b as unknown as Inside;
    const heardData = (): unknown[] => hostB.publications.filter((p) => p.channel === '/c').map((p) => p.message.data);
    try {
      await b.subscribe('b1', '/c');
      for (let n = 1; n <= 3; n++) await a.publish(publication('/c', n));
      await waitFor(() => heardData().length === 3, 3000, 'the first three');
      // B goes deaf: nothing reaches it, and it knows (as its subscriber connection's close says).
      let deaf = true;
      Object.defineProperty(inside.connection, 'hearing', { get: () => !deaf, configurable: true });
      const onMessage = inside.onMessage.bind(b);
      inside.onMessage = (channel, text) => void (deaf || onMessage(channel, text));
      inside.echoesLost();
      // The earlier failure's retry comes due now, while deaf.
      inside.catchUpLater(1);
      await inside.catchingUp;
      for (let n = 4; n <= 6; n++) await a.publish(publication('/c', n));
      // The bus is back: subscribed again, B reads what it missed.
      deaf = false;
      inside.catchUpLater(0);
      await inside.catchingUp;
      await waitFor(() => heardData().length === 6, 3000, () => `all six, heard ${JSON.stringify(heardData())}`);
      assert.deepEqual(heardData(), [1, 2, 3, 4, 5, 6]);
    } finally {
      await a.close();
      await b.close();
      await deleteKeys(prefix);
    }
  });
});

describe('redis engine: the holders of state channels', () => {
  it('frees the channels of a node that left, and a node whose claims Redis forgot makes them again', async () => {
    const prefix = uniquePrefix('state-holders');
    const options = { url: REDIS_URL, prefix, heartbeatInterval: 100, nodeTimeout: 400 };
    const [a, b, c] = [new RedisEngine(options), new RedisEngine(options), new RedisEngine(options)];
    const redis = new Redis(REDIS_URL);
    try {
      for (const engine of [a, b, c]) await engine.start(new RecordingHost());
      assert.equal(await a.claimState('/left'), null);
      assert.equal(await b.claimState('/left'), a.nodeId);
      await a.close();
      assert.equal(await b.stateHolder('/left'), null, 'its node left');
      assert.equal(await b.claimState('/left'), null);

      // Redis forgets the claims (a restart without persistence): the holder makes them again.
      assert.equal(await c.claimState('/kept'), null);
      await redis.del(`${prefix}states`, `${prefix}nodes`);
      const until = Date.now() + 3000;
      while ((await b.stateHolder('/kept')) !== c.nodeId) {
        assert.ok(Date.now() < until, 'node c did not claim its channel again');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(await c.stateHolder('/left'), b.nodeId, 'node b claimed its channel again too');
    } finally {
      for (const engine of [b, c]) await engine.close().catch(() => {});
      redis.disconnect();
      await deleteKeys(prefix);
    }
  });
});

describe('redis engine: large messages between nodes', () => {
  // A Redis of the test's own whose pub/sub output buffer bound is 1 MB (32 MB by default): a
  // message for one node past it would make Redis cut that node's subscriber off.
  let port = 0;
  let redis: ChildProcess | null = null;
  before(async () => {
    port = await freePort();
    redis = await startRedis(port, ['--client-output-buffer-limit', 'pubsub 1mb 1mb 0']);
  });
  after(() => void redis?.kill('SIGKILL'));

  async function twoNodes(options: { nodeMessageInlineBytes?: number } = {}): Promise<{ a: RedisEngine; b: RedisEngine; hostA: RecordingHost; hostB: RecordingHost; close(): Promise<void> }> {
    const prefix = uniquePrefix('large');
    const make = (): RedisEngine => new RedisEngine({ url: `redis://127.0.0.1:${port}`, prefix, ...options });
    const a = make();
    const b = make();
    const hostA = new RecordingHost();
    const hostB = new RecordingHost();
    await a.start(hostA);
    await b.start(hostB);
    return { a, b, hostA, hostB, close: async () => void (await Promise.all([a.close(), b.close()])) };
  }

  /** A payload of about `bytes` bytes, some of them outside ASCII, that names `label`. */
  const large = (label: string, bytes: number): string => JSON.stringify({ label, fill: 'é'.repeat(bytes / 4) + 'x'.repeat(bytes / 2) });

  it('sends a message past the bound through a key, in order with the small ones around it, and the node stays subscribed', async () => {
    const { a, b, hostB, close } = await twoNodes();
    try {
      const sent = ['{"n":1}', large('big-1', 2_000_000), '{"n":2}', large('big-2', 3_000_000), '{"n":3}', large('big-3', 70_000), '{"n":4}'];
      // All at once: the small ones behind a large one are published before it has been taken.
      const heard = await Promise.all(sent.map((payload) => a.sendToNode(b.nodeId, payload)));
      assert.deepEqual(heard, sent.map(() => true));
      await waitFor(() => hostB.nodeMessages.length === sent.length, 5000, () => `every message on b (have ${hostB.nodeMessages.length})`);
      assert.deepEqual(hostB.nodeMessages.map(([, payload]) => payload.length), sent.map((payload) => payload.length), 'in order, whole');
      assert.ok(hostB.nodeMessages.every(([from, payload], i) => from === a.nodeId && payload === sent[i]));
      assert.deepEqual(hostB.errors, [], 'nothing lost, nothing reported');
      assert.deepEqual([a.nodeMailStats(), b.nodeMailStats()], [{ stored: 3, lost: 0 }, { stored: 0, lost: 0 }], 'the three large ones stored (for /metrics)');
      // Still subscribed: what comes next arrives without a reconnect.
      assert.equal(await a.sendToNode(b.nodeId, '{"n":5}'), true);
      await waitFor(() => hostB.nodeMessages.length === sent.length + 1, 3000, 'the next one');
      const probe = new Redis({ port, host: '127.0.0.1' });
      try {
        assert.deepEqual(await probe.keys('*node:*:mail:*'), [], 'every stored message taken');
      } finally {
        probe.disconnect();
      }
    } finally {
      await close();
    }
  });

  it('sent through pub/sub (nodeMessageInlineBytes 0) the same message is lost: the bound is real', async () => {
    const { a, b, hostB, close } = await twoNodes({ nodeMessageInlineBytes: 0 });
    try {
      await a.sendToNode(b.nodeId, large('big', 2_000_000));
      await new Promise((resolve) => setTimeout(resolve, 1000));
      assert.equal(hostB.nodeMessages.length, 0, 'Redis cut the subscriber off');
    } finally {
      await close();
    }
  });

  it("reports a stored message that is gone or not its own and goes on with the next; never takes another node's key", async () => {
    const { a, b, hostB, close } = await twoNodes();
    const raw = new Redis({ port, host: '127.0.0.1' });
    try {
      const inside = b as unknown as { ownChannel: string; layout: { nodeMail(id: string): string } };
      const foreign = `${inside.layout.nodeMail(a.nodeId)}x:1`;
      await raw.set(foreign, 'not for b');
      await raw.publish(inside.ownChannel, `["m",${JSON.stringify(foreign)}]\n`);
      await raw.publish(inside.ownChannel, `["m",${JSON.stringify(`${inside.layout.nodeMail(b.nodeId)}x:2`)}]\n`);
      assert.equal(await a.sendToNode(b.nodeId, '{"after":true}'), true);
      await waitFor(() => hostB.nodeMessages.length === 1, 3000, 'the message after them');
      assert.equal(hostB.nodeMessages[0]![1], '{"after":true}');
      const reported = hostB.errors.map((error) => (error as Error).message);
      assert.equal(reported.length, 2, reported.join('\n'));
      assert.match(reported[0]!, /not meant for this node, not taken/);
      assert.match(reported[1]!, /was lost: .*x:2 was gone/);
      assert.equal(b.nodeMailStats().lost, 1, 'the gone one counted as lost');
      assert.equal(await raw.get(foreign), 'not for b', "another node's key is left alone");
    } finally {
      raw.disconnect();
      await close();
    }
  });

  it("takes a census whose answer is past the bound (a node's 15 000 sessions)", async () => {
    const { a, hostA, hostB, close } = await twoNodes();
    try {
      hostB.described = Array.from({ length: 15_000 }, (_, i) => ({ clientId: `session-${i}`, user: `user-${i}`, roles: [], claims: {}, data: { note: 'x'.repeat(60) }, connectionType: 'websocket', subscriptions: ['/a', '/b'] }));
      const infos = await a.census();
      assert.equal(infos.length, 15_000);
      assert.equal(infos[14_999]!.clientId, 'session-14999');
      assert.deepEqual([...hostA.errors, ...hostB.errors], []);
    } finally {
      await close();
    }
  });

  it('refuses a bad nodeMessageInlineBytes', () => {
    for (const value of [-1, 1.5, '64k', 64 * 1024 * 1024]) {
      assert.throws(() => new RedisEngine({ nodeMessageInlineBytes: value as number }), (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_OPTION' && /nodeMessageInlineBytes/.test(error.message));
    }
  });
});
