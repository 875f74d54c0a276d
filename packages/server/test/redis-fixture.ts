/**
 * Redis for the tests: the server at PERIHELION_TEST_REDIS (default redis://127.0.0.1:6379), a key
 * prefix of each test's own (so runs never meet), and the keys removed afterwards. Tests that
 * need Redis fail with a message saying so when it is absent: they are never skipped silently.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { RedisLayout } from '../src/engine/redis-layout.js';
import type { EngineFixture } from './engine-conformance.js';

export const REDIS_URL = process.env.PERIHELION_TEST_REDIS ?? 'redis://127.0.0.1:6379';

/** Resolves when Redis answers; otherwise rejects saying how to provide it. */
export async function requireRedis(): Promise<void> {
  const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    throw new Error(
      `These tests need a Redis server at ${REDIS_URL} (start one with "redis-server --daemonize yes", ` +
        `or point PERIHELION_TEST_REDIS at one): ${(error as Error).message}`,
    );
  } finally {
    client.disconnect();
  }
}

/** A prefix no other test run uses. */
export function uniquePrefix(label: string): string {
  return `perihelion-test:${label}:${process.pid}:${randomBytes(4).toString('hex')}:`;
}

/** Deletes every key under `prefix`. */
export async function deleteKeys(prefix: string): Promise<void> {
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  client.on('error', () => {});
  try {
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await client.del(...keys);
    } while (cursor !== '0');
  } finally {
    client.disconnect();
  }
}

/** Keys under `prefix` (to check that a test left nothing behind, or what a node wrote). */
export async function keysUnder(prefix: string): Promise<string[]> {
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  try {
    return await client.keys(`${prefix}*`);
  } finally {
    client.disconnect();
  }
}

/**
 * A redis-server of a test's own on `port`, without persistence (restarted, it is empty), with
 * `settings` as further command-line arguments (`['--client-output-buffer-limit', 'pubsub 1mb 1mb 0']`).
 */
export async function startRedis(port: number, settings: readonly string[] = []): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...settings], { stdio: 'ignore' });
  let failed: Error | null = null;
  child.on('error', (error) => (failed = error));
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  probe.on('error', () => {});
  try {
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        await probe.connect();
        await probe.ping();
        break;
      } catch (error) {
        const gone = failed ?? (child.exitCode !== null ? new Error(`it exited with code ${child.exitCode}`) : null);
        if (gone !== null || Date.now() > deadline) throw new Error(`redis-server did not start on port ${port} (is redis-server installed? apt-get install -y redis-server): ${(gone ?? (error as Error)).message}`);
        probe.disconnect();
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  } finally {
    probe.disconnect();
  }
  return child;
}

/** A local Redis Cluster started for a test file (examples/cluster/redis-cluster.mjs). */
export interface LocalRedisCluster {
  /** Its nodes' URLs, separated by commas (the engine's `url` with `cluster: true`). */
  url: string;
  ports: number[];
  /** Kills one shard (SIGKILL) and starts it again, empty, in its place. */
  restart(port: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a local Redis Cluster of three shards (redis-server and redis-cli must be installed). */
export async function startRedisCluster(): Promise<LocalRedisCluster> {
  const starter = new URL('../../../../examples/cluster/redis-cluster.mjs', import.meta.url).href;
  const { startRedisCluster: start } = (await import(starter)) as { startRedisCluster: () => Promise<LocalRedisCluster> };
  return start();
}

/**
 * The conformance suite's LRU case for an engine with `partitions`: each partition keeps its share
 * of maxChannels (two here), so the three channels must share one partition.
 */
export function lruCase(partitions: number): NonNullable<EngineFixture['lru']> {
  const layout = new RedisLayout('lru:', partitions > 1, partitions);
  const channels: string[] = [];
  for (let i = 0; channels.length < 3; i++) if (layout.partitionOf(`/lru/${i}`) === layout.partitionOf('/lru/0')) channels.push(`/lru/${i}`);
  return { maxChannels: 2 * partitions, channels: channels as unknown as readonly [string, string, string] };
}
