/**
 * The Redis engine against the shared conformance suite, alone and as two nodes of one cluster;
 * once more with the channels split into partitions (as on a Redis Cluster, here on one Redis).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PerihelionError, RedisEngine } from '../src/index.js';
import { distributedEngineConformance, engineConformance, RecordingHost, type EngineFixture } from './engine-conformance.js';
import { REDIS_URL, deleteKeys, lruCase, requireRedis, uniquePrefix } from './redis-fixture.js';

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
