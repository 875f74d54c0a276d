// The cluster scenarios' servers: several nodes of one server sharing one Redis or a Redis Cluster,
// and the clean-up of what they leave in it.
import { log } from './log.mjs';
import { ServerProcess } from './server-process.mjs';

/**
 * The cluster scenario's servers: `size` processes of one server sharing one Redis, each pinned to
 * CPU 0 like a single server. It answers like one ServerProcess: the publisher runs on the first
 * node; stats add up CPU and memory of all of them.
 */
export class ServerGroup {
  /** launch: ServerProcess's options other than env (transport, pinned, cpuProfDir), the same for every node. */
  constructor(name, size, { redisUrl, redisCluster = false, prefix, ...launch }) {
    this.name = name;
    const env = { BENCH_REDIS_URL: redisUrl, BENCH_REDIS_PREFIX: prefix, ...(redisCluster ? { BENCH_REDIS_CLUSTER: '1' } : {}) };
    this.nodes = Array.from({ length: size }, () => new ServerProcess(name, { ...launch, env }));
  }

  get pids() {
    return this.nodes.map((node) => node.child.pid);
  }

  async next(type, ms) {
    const replies = await Promise.all(this.nodes.map((node) => node.next(type, ms)));
    return { ...replies[0], ports: replies.map((r) => r.port), rss: replies.reduce((sum, r) => sum + r.rss, 0) };
  }

  async request(message, replyType, ms) {
    if (message.type !== 'stats') return this.nodes[0].request(message, replyType, ms);
    const all = await Promise.all(this.nodes.map((node) => node.request(message, replyType, ms)));
    const sum = (read) => all.reduce((total, stats) => total + read(stats), 0);
    return { ...all[0], cpu: { user: sum((s) => s.cpu.user), system: sum((s) => s.cpu.system) }, rss: sum((s) => s.rss), rssPeak: sum((s) => s.rssPeak), heapUsed: sum((s) => s.heapUsed) };
  }

  async stop() {
    await Promise.all(this.nodes.map((node) => node.stop()));
  }
}

export async function cleanRedis(url, prefix) {
  const { Redis } = await import('ioredis');
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } catch (error) {
    log(`bench: could not clean Redis keys ${prefix}*: ${error.message}`);
  } finally {
    redis.disconnect();
  }
}

/** A local Redis Cluster of three shards for a scenario (examples/cluster/redis-cluster.mjs): { url, stop() }. */
export async function startLocalRedisCluster() {
  const { startRedisCluster } = await import(new URL('../examples/cluster/redis-cluster.mjs', import.meta.url).href);
  const cluster = await startRedisCluster();
  log(`bench: a local Redis Cluster of three shards on ${cluster.url}`);
  return cluster;
}
