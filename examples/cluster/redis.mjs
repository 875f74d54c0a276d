/**
 * A few Redis commands for the cluster example and its test: whether Redis answers and which node
 * holds a session, on one Redis or on a Redis Cluster (`url` then lists its nodes, comma-separated,
 * and `cluster` is true), and removing every key of a prefix on one Redis. ioredis is
 * @perihelion/server's own dependency (the Redis engine's client); it is loaded from there.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.resolve('@perihelion/server'));
const { Redis, Cluster } = require('ioredis');

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

function connect(url, cluster) {
  const options = { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 };
  const client = cluster ? new Cluster(url.split(','), { lazyConnect: true, redisOptions: options, clusterRetryStrategy: () => null }) : new Redis(url, options);
  client.on('error', () => {});
  return client;
}

async function using(url, fn, cluster = false) {
  const client = connect(url, cluster);
  try {
    await client.connect();
    return await fn(client);
  } finally {
    client.disconnect();
  }
}

/** Resolves when Redis answers at `url`; otherwise rejects saying how to start one. */
export async function requireRedis(url = DEFAULT_REDIS_URL, cluster = false) {
  try {
    await using(url, (client) => client.ping(), cluster);
  } catch (error) {
    throw new Error(
      `the cluster example needs a Redis server at ${url} (start one with "redis-server --daemonize yes", ` +
        `or set REDIS_URL to one you run): ${error.message}`,
    );
  }
}

/**
 * The id of the node that holds session `clientId` (the engine's `owner` hash), or null. On a
 * cluster the control keys carry the hash tag {c} (see the engine's redis-layout.ts).
 */
export function ownerOf(url, prefix, clientId, cluster = false) {
  return using(url, (client) => client.hget(`${prefix}${cluster ? '{c}' : ''}owner`, clientId), cluster);
}

/** Deletes every key under `prefix` on one Redis; resolves to how many there were. (A local Redis Cluster is thrown away whole.) */
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
