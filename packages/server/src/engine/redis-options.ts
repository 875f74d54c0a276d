/**
 * The Redis engine's options: their defaults, and the checks that refuse a bad one when the engine
 * is made, with a message that says what was expected (long before the first connection attempt).
 */
import { PerihelionError } from '../errors.js';

export interface RedisEngineOptions {
  /**
   * Where Redis is: `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS). With `cluster`,
   * one or more nodes of the Redis Cluster to start from, separated by commas. Default: redis://127.0.0.1:6379.
   */
  url?: string;
  /**
   * Redis is a Redis Cluster (7 or later): the data plane is split into `partitions` spread over
   * its shards, published with sharded pub/sub (see redis-layout.ts). Default: false.
   */
  cluster?: boolean;
  /**
   * Partitions of channels' positions, histories and broadcasts; every node of a cluster must use
   * the same number. More partitions spread publishes over more shards; each node subscribes to
   * every partition. Default: 16 on a Redis Cluster, 1 otherwise; at most 1024.
   */
  partitions?: number;
  /**
   * Prefix of every key and pub/sub channel, so that several clusters can share one Redis; no
   * braces (they would be a Redis Cluster hash tag). Default: "perihelion:".
   */
  prefix?: string;
  /** How often this node tells the others it is alive, ms. Default: 5000. */
  heartbeatInterval?: number;
  /** Silence after which a node counts as dead and its sessions are removed, ms. Default: 15000. */
  nodeTimeout?: number;
  /** Longest wait to connect at start, ms. Default: 5000. */
  connectTimeout?: number;
  /** Longest wait for a Redis command, or for a publish or fence to come back through Redis, ms. Default: 5000. */
  commandTimeout?: number;
  /**
   * Messages meant for one node (the replies of requests it forwarded, what it writes to lines
   * another node holds, relayed state snapshots, census answers) larger than this many bytes go by
   * way of a key of their own, not through pub/sub, whose output buffer Redis bounds
   * (`client-output-buffer-limit pubsub`, 32 MB by default) by cutting the subscriber off; 0 sends
   * every message through pub/sub. Default: 65536.
   */
  nodeMessageInlineBytes?: number;
}

export const REDIS_DEFAULTS = {
  url: 'redis://127.0.0.1:6379',
  cluster: false,
  /** 0: chosen by `cluster` (16 on a Redis Cluster, 1 otherwise). */
  partitions: 0,
  prefix: 'perihelion:',
  heartbeatInterval: 5000,
  nodeTimeout: 15000,
  connectTimeout: 5000,
  commandTimeout: 5000,
  nodeMessageInlineBytes: 65_536,
} as const;

/** The options with their defaults filled in; throws ERR_INVALID_OPTION for a bad one. */
export function resolveRedisOptions(options: RedisEngineOptions): Required<RedisEngineOptions> {
  const resolved: Required<RedisEngineOptions> = { ...REDIS_DEFAULTS, ...definedOnly(options) };
  if (typeof resolved.cluster !== 'boolean') invalid(`option "cluster" must be true or false, got ${JSON.stringify(resolved.cluster)}`);
  for (const url of redisUrls(resolved)) {
    validateRedisUrl(url);
    if (resolved.cluster && !/^\/?0?$/.test(new URL(url).pathname)) invalid(`a Redis Cluster has only database 0; the URL ${JSON.stringify(describeUrl(url))} names another`);
  }
  const { prefix, partitions } = resolved;
  if (typeof prefix !== 'string') invalid(`option "prefix" must be a string, got ${JSON.stringify(prefix)}`);
  if (/[{}]/.test(prefix)) invalid(`option "prefix" may not hold braces (a Redis Cluster hash tag), got ${JSON.stringify(prefix)}`);
  if (partitions === 0) resolved.partitions = resolved.cluster ? 16 : 1;
  else if (!Number.isInteger(partitions) || partitions < 1 || partitions > MAX_PARTITIONS) {
    invalid(`option "partitions" must be a whole number from 1 to ${MAX_PARTITIONS}, got ${JSON.stringify(partitions)}`);
  }
  for (const key of ['heartbeatInterval', 'nodeTimeout', 'connectTimeout', 'commandTimeout'] as const) {
    const value = resolved[key];
    if (!Number.isInteger(value) || value < 10) invalid(`option "${key}" must be a whole number of ms (10 or more), got ${JSON.stringify(value)}`);
  }
  const inline = resolved.nodeMessageInlineBytes;
  if (!Number.isInteger(inline) || inline < 0 || inline > MAX_INLINE_BYTES) {
    invalid(`option "nodeMessageInlineBytes" must be a whole number of bytes from 0 (every message through pub/sub) to ${MAX_INLINE_BYTES}, got ${JSON.stringify(inline)}`);
  }
  if (resolved.nodeTimeout <= resolved.heartbeatInterval) {
    invalid(`option "nodeTimeout" (${resolved.nodeTimeout}) must be longer than "heartbeatInterval" (${resolved.heartbeatInterval}), or live nodes would be taken for dead`);
  }
  return resolved;
}

const MAX_PARTITIONS = 1024;
/** Past Redis's own default pub/sub hard limit a message through pub/sub would always cut its node off. */
const MAX_INLINE_BYTES = 32 * 1024 * 1024;

/** The URLs `url` names: one, or on a cluster the nodes to start from. */
export function redisUrls(options: { url: string; cluster: boolean }): string[] {
  if (typeof options.url !== 'string' || !options.cluster) return [options.url];
  return options.url.split(',').map((url) => url.trim());
}

/** The URL (or URLs) without a password, for messages. */
export function describeUrl(url: string): string {
  if (url.includes(',')) return url.split(',').map((one) => describeUrl(one.trim())).join(',');
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return url;
  }
}

function validateRedisUrl(url: unknown): void {
  const example = 'redis://127.0.0.1:6379 (or rediss:// for TLS, redis://:password@host:6379/0 with a password and database)';
  if (typeof url !== 'string') invalid(`the Redis URL must be a string like ${example}`);
  let parsed: URL;
  try {
    parsed = new URL(url as string);
  } catch {
    return invalid(`the Redis URL ${JSON.stringify(url)} is not a URL; expected ${example}`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    invalid(`the Redis URL ${JSON.stringify(describeUrl(url as string))} must start with redis:// or rediss://; expected ${example}`);
  }
  if (parsed.hostname === '') invalid(`the Redis URL ${JSON.stringify(url)} names no host; expected ${example}`);
  const db = parsed.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) invalid(`the Redis URL's database must be a number (like /0), got ${JSON.stringify(parsed.pathname)}`);
}

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<T>;
}
