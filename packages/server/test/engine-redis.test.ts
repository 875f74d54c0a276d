/**
 * The Redis engine against the shared conformance suite, alone and as two nodes of one cluster;
 * once more with the channels split into partitions (as on a Redis Cluster, here on one Redis).
 */
import { before } from 'node:test';
import { RedisEngine } from '../src/index.js';
import { distributedEngineConformance, engineConformance, type EngineFixture } from './engine-conformance.js';
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
