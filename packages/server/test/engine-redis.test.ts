/** The Redis engine against the shared conformance suite, alone and as two nodes of one cluster. */
import { before } from 'node:test';
import { RedisEngine } from '../src/index.js';
import { distributedEngineConformance, engineConformance, type EngineFixture } from './engine-conformance.js';
import { REDIS_URL, deleteKeys, requireRedis, uniquePrefix } from './redis-fixture.js';

before(requireRedis);

function fixture(label: string): EngineFixture {
  let prefix = uniquePrefix(label);
  return {
    create: () => new RedisEngine({ url: REDIS_URL, prefix }),
    reset: async () => {
      await deleteKeys(prefix);
      prefix = uniquePrefix(label);
    },
  };
}

engineConformance('redis', fixture('conformance'));
distributedEngineConformance('redis', fixture('distributed'));
