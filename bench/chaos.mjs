// npm run chaos -- [--runs R] [--messages N] [--seed S]: a cluster whose lines to Redis misbehave.
// Two nodes on the Redis at --redis, each through a fault proxy of its own that delays, resets,
// truncates and silences its Redis lines at random (packages/server/test/fault-proxy.ts); node A
// publishes N numbered messages (idempotency keys, retried until accepted); on node B a Perihelion
// client (positions, recovery) and an in-process listener (no recovery, as CometD and Faye) must
// each end with every message once and in order. Exits 1 if any run loses, repeats or reorders one.
// Needs `npm run build:test` (it runs the compiled fault proxy) and a Redis (default 127.0.0.1:6379).
import http from 'node:http';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    messages: { type: 'string', default: '3000' },
    seed: { type: 'string', default: '1' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
    settle: { type: 'string', default: '40' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(`npm run chaos -- [--runs R] [--messages N] [--seed S] [--redis URL] [--settle S]

Two Perihelion nodes on one Redis, each reaching it through a fault proxy that delays, resets,
truncates and silences its lines at random (seeded: run S, S+1, …); node A publishes N numbered
messages (default 3000) with idempotency keys, retried until accepted; on node B a Perihelion client
and an in-process listener must each get every message once and in order, within S seconds
(default 40) of the last publish. R runs (default 3); exit 1 if any fails.`);
  process.exit(0);
}
const proxyModule = new URL('../packages/server/dist/test/fault-proxy.js', import.meta.url);
if (!existsSync(fileURLToPath(proxyModule))) {
  console.error('chaos: packages/server/dist/test/fault-proxy.js is missing: run `npm run build:test` first');
  process.exit(2);
}
const { createServer, RedisEngine } = await import('../packages/server/dist/src/index.js');
const { Client } = await import('../packages/client/dist/src/index.js');
const { FaultProxy, seeded } = await import(proxyModule.href);
const { Redis } = await import('ioredis');

const total = Number(values.messages);
const redis = new URL(values.redis);
const redisPort = Number(redis.port || 6379);

/** What one receiver got, judged: missing, repeated and out-of-order messages. */
function judge(got) {
  const seen = new Set(got);
  let missing = 0;
  for (let n = 0; n < total; n++) if (!seen.has(n)) missing++;
  let disorder = 0;
  for (let i = 1; i < got.length; i++) if (got[i] <= got[i - 1]) disorder++;
  return { got: got.length, missing, repeated: got.length - seen.size, disorder, ok: missing === 0 && got.length === seen.size && disorder === 0 };
}

async function run(seed) {
  const prefix = `chaos-${process.pid}-${seed}:`;
  const nodes = [];
  for (let i = 0; i < 2; i++) {
    const proxy = await FaultProxy.start(redisPort, { blackholeMs: 3000 });
    const bayeux = createServer({
      open: true,
      engine: new RedisEngine({ url: `redis://${redis.hostname}:${proxy.port}`, prefix, heartbeatInterval: 300, nodeTimeout: 4000, commandTimeout: 1000 }),
      historySize: total,
      maxQueue: total,
    });
    bayeux.on('error', () => {}); // the faults are the point: counted by the proxy, not logged
    const server = http.createServer();
    bayeux.attach(server);
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    await bayeux.whenReady();
    nodes.push({ bayeux, server, proxy, url: `http://127.0.0.1:${server.address().port}/bayeux` });
  }
  const [a, b] = nodes;
  const byClient = [];
  const byListener = [];
  const client = new Client(b.url, { minReconnectDelay: 50, maxReconnectDelay: 300 });
  await client.subscribe('/chaos', (n) => void byClient.push(n));
  b.bayeux.subscribe('/chaos', (message) => void byListener.push(message.data));
  const random = seeded(seed);
  for (const { proxy } of nodes) proxy.startChaos({ delay: 3, reset: 2, truncate: 1, blackhole: 1 }, 300, 1200, random);
  let refused = 0;
  for (let n = 0; n < total; n++) {
    for (;;) {
      try {
        await a.bayeux.publish('/chaos', n, { idempotencyKey: `${prefix}${n}` });
        break;
      } catch {
        refused++;
        await sleep(50);
      }
    }
    if (n % 5 === 0) await sleep(2);
  }
  for (const { proxy } of nodes) proxy.stopChaos();
  const deadline = Date.now() + Number(values.settle) * 1000;
  while ((byClient.length < total || byListener.length < total) && Date.now() < deadline) await sleep(100);
  await sleep(500);
  const faults = nodes.map(({ proxy }) => proxy.counts);
  const result = { seed, client: judge(byClient), listener: judge(byListener), refused, faults };
  await client.disconnect();
  for (const { bayeux, server, proxy } of nodes) {
    await bayeux.close();
    server.close();
    await proxy.close();
  }
  // Nothing of the run is left in Redis.
  const cleaner = new Redis(values.redis);
  for await (const keys of cleaner.scanStream({ match: `${prefix}*`, count: 500 })) if (keys.length > 0) await cleaner.del(...keys);
  cleaner.disconnect();
  return result;
}

let failed = 0;
for (let i = 0; i < Number(values.runs); i++) {
  const result = await run(Number(values.seed) + i);
  if (!result.client.ok || !result.listener.ok) failed++;
  console.log(JSON.stringify(result));
}
console.log(`${Number(values.runs) - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
