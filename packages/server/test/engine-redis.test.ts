/**
 * The Redis engine against the shared conformance suite, alone and as two nodes of one cluster;
 * once more with the channels split into partitions (as on a Redis Cluster, here on one Redis).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PerihelionError, RedisEngine } from '../src/index.js';
import { Redis } from 'ioredis';
import { distributedEngineConformance, engineConformance, publication, RecordingHost, type EngineFixture } from './engine-conformance.js';
import { REDIS_URL, deleteKeys, keysUnder, lruCase, requireRedis, uniquePrefix } from './redis-fixture.js';

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
