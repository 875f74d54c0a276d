// npm run chaos -- [--runs R] [--messages N] [--channels C] [--seed S]: a cluster whose lines to
// Redis misbehave. Two nodes on the Redis at --redis, each through a fault proxy of its own that
// delays, resets, truncates and silences its Redis lines at random
// (packages/server/test/fault-proxy.ts); N numbered messages are published round-robin on C
// channels, the even ones by node A in process, the odd ones by a Perihelion client of node B
// (both with idempotency keys, retried until accepted); on node B Perihelion clients (positions,
// recovery) over HTTP streaming, long-polling and a WebSocket (that one through a wildcard), whose
// own lines go through a fault proxy too (unless --calm-clients), and an in-process listener on the
// wildcard (no recovery, as CometD and Faye), must each end with every message once and each
// channel's in order. Exits 1 if any run loses, repeats or reorders one.
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
    channels: { type: 'string', default: '3' },
    'calm-clients': { type: 'boolean', default: false },
    seed: { type: 'string', default: '1' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
    settle: { type: 'string', default: '40' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(`npm run chaos -- [--runs R] [--messages N] [--channels C] [--seed S] [--redis URL] [--settle S] [--calm-clients]

Two Perihelion nodes on one Redis, each reaching it through a fault proxy that delays, resets,
truncates and silences its lines at random (seeded: run S, S+1, …); N numbered messages (default
3000) are published round-robin on C channels /chaos/0… (default 3), the even ones by node A in
process and the odd ones by a Perihelion client of node B, with idempotency keys, retried until
accepted; on node B Perihelion clients over HTTP streaming and long-polling (each
channel subscribed) and over a WebSocket (/chaos/*), their lines to node B misbehaving the same way
(not with --calm-clients), and an in-process listener (/chaos/*) must each get every message once
and each channel's in order, within S seconds (default 40) of the last publish. R runs (default 3);
exit 1 if any fails.`);
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
const { WebSocket } = await import('ws');

const total = Number(values.messages);
const channels = Number(values.channels);
if (!Number.isSafeInteger(total) || total < 1 || !Number.isSafeInteger(channels) || channels < 1) {
  console.error('chaos: --messages and --channels are positive integers');
  process.exit(2);
}
const channelOf = (n) => `/chaos/${n % channels}`;
const redis = new URL(values.redis);
const redisPort = Number(redis.port || 6379);

/** The position each message a receiver got came with ("epoch:offset", or "none"), in the order got. */
const positionsOf = new WeakMap();
const positions = (got) => positionsOf.get(got) ?? (positionsOf.set(got, []), positionsOf.get(got));
const positionOf = (message) => {
  const position = message?.ext?.position;
  return position ? `${position.epoch}:${position.offset}` : 'none';
};

/** What one receiver got, judged: missing, repeated and out-of-order messages (order is per channel). */
function judge(got) {
  const seen = new Set(got);
  let missing = 0;
  for (let n = 0; n < total; n++) if (!seen.has(n)) missing++;
  let disorder = 0;
  const last = new Map();
  for (const n of got) {
    const channel = n % channels;
    if (last.has(channel) && n <= last.get(channel)) disorder++;
    last.set(channel, n);
  }
  const ok = missing === 0 && got.length === seen.size && disorder === 0;
  return { got: got.length, missing, repeated: got.length - seen.size, disorder, ok, ...(ok ? {} : { which: which(got, seen) }) };
}

/** The first few messages missing and repeated, and where the order broke (for a failed run). */
function which(got, seen) {
  const missing = [];
  for (let n = 0; n < total && missing.length < 10; n++) if (!seen.has(n)) missing.push(n);
  const counted = new Map();
  for (const n of got) counted.set(n, (counted.get(n) ?? 0) + 1);
  // Each repeat with the positions of its copies: the same position twice is a delivery made
  // twice; another epoch, or none, a message published or replayed twice.
  const came = positions(got);
  const repeated = [...counted]
    .filter(([, times]) => times > 1)
    .slice(0, 10)
    .map(([n]) => `${n}@${got.flatMap((m, i) => (m === n ? [came[i] ?? '?'] : [])).join('/')}`);
  const disorder = [];
  const last = new Map();
  for (const n of got) {
    const channel = n % channels;
    if (last.has(channel) && n <= last.get(channel) && disorder.length < 10) disorder.push(`${last.get(channel)}>${n}`);
    last.set(channel, n);
  }
  return { missing, repeated, disorder };
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
  // The clients reach node B through a proxy that cuts their lines too (as a mobile network, a
  // balancer's idle timeout, a NAT that forgets): a FIN mid-response, a RST, silence.
  const clientProxy = values['calm-clients'] ? null : await FaultProxy.start(b.server.address().port, { blackholeMs: 3000 });
  const url = clientProxy ? `http://127.0.0.1:${clientProxy.port}/bayeux` : b.url;
  const reconnect = { minReconnectDelay: 50, maxReconnectDelay: 300 };
  const receivers = { streaming: [], longPolling: [], websocket: [], listener: [] };
  const clients = [
    [new Client(url, { ...reconnect, transports: ['http-streaming'] }), receivers.streaming, false],
    [new Client(url, { ...reconnect, transports: ['long-polling'] }), receivers.longPolling, false],
    [new Client(url, { ...reconnect, transports: ['websocket'], WebSocket }), receivers.websocket, true],
  ];
  // A publisher of node B, over a WebSocket: what it is not sure went through, it publishes again
  // with the same key (a timeout; a publish the client itself sends again on its next line is
  // recognised by its id).
  const publisher = new Client(url, { ...reconnect, transports: ['websocket'], WebSocket, timeout: 3000 });
  for (const [client, got, wildcard] of clients) {
    const record = (n, message) => {
      got.push(n);
      positions(got).push(positionOf(message));
    };
    if (wildcard) await client.subscribe('/chaos/*', record);
    else for (let c = 0; c < channels; c++) await client.subscribe(`/chaos/${c}`, record);
  }
  b.bayeux.subscribe('/chaos/*', (message) => {
    receivers.listener.push(message.data);
    positions(receivers.listener).push(positionOf(message));
  });
  const short = () => Object.values(receivers).some((got) => got.length < total);
  const random = seeded(seed);
  const proxies = [...nodes.map(({ proxy }) => proxy), ...(clientProxy ? [clientProxy] : [])];
  for (const proxy of proxies) proxy.startChaos({ delay: 3, reset: 2, truncate: 1, blackhole: 1 }, 300, 1200, random);
  let refused = 0;
  for (let n = 0; n < total; n++) {
    for (;;) {
      try {
        if (n % 2 === 0) await a.bayeux.publish(channelOf(n), n, { idempotencyKey: `${prefix}${n}` });
        else await publisher.publish(channelOf(n), n, { idempotencyKey: `${prefix}${n}` });
        break;
      } catch {
        refused++;
        await sleep(50);
      }
    }
    if (n % 5 === 0) await sleep(2);
  }
  for (const proxy of proxies) proxy.stopChaos();
  const deadline = Date.now() + Number(values.settle) * 1000;
  while (short() && Date.now() < deadline) await sleep(100);
  await sleep(500);
  const faults = { redis: nodes.map(({ proxy }) => proxy.counts), ...(clientProxy ? { clients: clientProxy.counts } : {}) };
  const judged = Object.fromEntries(Object.entries(receivers).map(([name, got]) => [name, judge(got)]));
  const result = { seed, ok: Object.values(judged).every((j) => j.ok), ...judged, refused, faults };
  for (const client of [publisher, ...clients.map(([client]) => client)]) await client.disconnect();
  await clientProxy?.close();
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
  if (!result.ok) failed++;
  console.log(JSON.stringify(result));
}
console.log(`${Number(values.runs) - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
