// How the Redis engine's publishes spread over a Redis Cluster's shards, against one Redis, on the
// same machine in one run:
//
//   node bench/redis-spread.mjs [--messages 30000] [--channels 1000] [--in-flight 64]
//
// One Perihelion engine publishes `messages` messages over `channels` channels (each keeping
// history), with `in-flight` publishes outstanding, first on a fresh standalone redis-server, then
// on a fresh local Redis Cluster of three shards (both started here, on free ports, and stopped).
// For each, the Redis CPU (INFO cpu, user + system) per 1 000 publishes: in all, and on the busiest
// process. On one Redis the busiest process is all of it; on a cluster each shard takes its
// partitions' share, so the busiest shard bounds the publish rate. A 2-core machine cannot show
// the throughput itself (three shards, the engine and this script share two cores): the CPU split
// is what carries over to one machine per shard.
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { messages: { type: 'string', default: '30000' }, channels: { type: 'string', default: '1000' }, 'in-flight': { type: 'string', default: '64' } } });
const MESSAGES = Number(values.messages);
const CHANNELS = Number(values.channels);
const IN_FLIGHT = Number(values['in-flight']);
for (const [name, value] of [['messages', MESSAGES], ['channels', CHANNELS], ['in-flight', IN_FLIGHT]]) {
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a whole number ≥ 1`);
}

const { RedisEngine } = await import(new URL('../packages/server/dist/src/index.js', import.meta.url).href);
const { startRedisCluster, startRedisServer } = await import(new URL('../examples/cluster/redis-cluster.mjs', import.meta.url).href);
const { Redis } = await import('ioredis');

async function cpuOf(port) {
  const client = new Redis({ port, host: '127.0.0.1' });
  try {
    const info = await client.info('cpu');
    const read = (name) => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)[1]);
    return read('used_cpu_user') + read('used_cpu_sys');
  } finally {
    client.disconnect();
  }
}

async function measure(label, store, cluster) {
  const engine = new RedisEngine({ url: store.url, cluster, prefix: 'spread:' });
  const host = {
    historySettings: { retentionFor: () => ({ size: 100, ttl: 60_000 }), maxChannels: CHANNELS * 2, maxChars: 1 << 30 },
    onPublication() {},
    onDirect() {},
    onReplay() {},
    onEndSession() {},
    onNodeMessage() {},
    describeSessions: () => [],
    reportError: (error) => console.error(`${label}: ${error.message}`),
  };
  await engine.start(host);
  const payload = JSON.stringify({ channel: '/x', data: 'x'.repeat(100) });
  const publication = (i) => {
    const channel = `/spread/${i % CHANNELS}`;
    return { channel, payload: payload.replace('/x', channel), ext: 'none', message: { channel, data: 'x'.repeat(100) } };
  };
  const before = await Promise.all(store.ports.map(cpuOf));
  const started = process.hrtime.bigint();
  let next = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < MESSAGES) await engine.publish(publication(next++));
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const after = await Promise.all(store.ports.map(cpuOf));
  await engine.close();
  const per1000 = after.map((cpu, i) => ((cpu - before[i]) * 1000 * 1000) / MESSAGES); // ms of CPU per 1 000 publishes
  const total = per1000.reduce((a, b) => a + b, 0);
  const busiest = Math.max(...per1000);
  console.log(
    `${label.padEnd(30)} ${(MESSAGES / seconds).toFixed(0).padStart(7)} publishes/s   Redis CPU per 1 000 publishes: ${total.toFixed(1)} ms in all, ${busiest.toFixed(1)} ms on the busiest process` +
      (per1000.length > 1 ? ` (shares ${per1000.map((ms) => `${((100 * ms) / total).toFixed(0)} %`).join(' / ')})` : ''),
  );
  return { total, busiest };
}

console.log(`${MESSAGES} publishes over ${CHANNELS} channels, ${IN_FLIGHT} in flight, history kept`);
/** Starts a store, measures on it, stops it. */
async function on(label, start, cluster) {
  const store = await start();
  try {
    return await measure(label, store, cluster);
  } finally {
    await store.stop();
  }
}
const single = await on('one Redis', startRedisServer, false);
const sharded = await on('Redis Cluster, three shards', startRedisCluster, true);
console.log(`busiest shard / one Redis: ${(sharded.busiest / single.busiest).toFixed(2)}× the CPU per publish; all shards together: ${(sharded.total / single.total).toFixed(2)}×`);
