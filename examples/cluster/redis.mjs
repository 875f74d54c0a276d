/**
 * A few Redis commands for the cluster example and its test: whether Redis answers, which node
 * holds a session, and removing every key of a prefix. ioredis is @perihelion/server's own
 * dependency (the Redis engine's client); it is loaded from there.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.resolve('@perihelion/server'));
const { Redis } = require('ioredis');

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

function connect(url) {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
  client.on('error', () => {});
  return client;
}

async function using(url, fn) {
  const client = connect(url);
  try {
    await client.connect();
    return await fn(client);
  } finally {
    client.disconnect();
  }
}

/** Resolves when Redis answers at `url`; otherwise rejects saying how to start one. */
export async function requireRedis(url = DEFAULT_REDIS_URL) {
  try {
    await using(url, (client) => client.ping());
  } catch (error) {
    throw new Error(
      `the cluster example needs a Redis server at ${url} (start one with "redis-server --daemonize yes", ` +
        `or set REDIS_URL to one you run): ${error.message}`,
    );
  }
}

/** The id of the node that holds session `clientId` (the engine's `owner` hash), or null. */
export function ownerOf(url, prefix, clientId) {
  return using(url, (client) => client.hget(`${prefix}owner`, clientId));
}

/** Deletes every key under `prefix`; resolves to how many there were. */
export function deleteKeys(url, prefix) {
  return using(url, async (client) => {
    let cursor = '0';
    let count = 0;
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) count += await client.del(...keys);
    } while (cursor !== '0');
    return count;
  });
}
