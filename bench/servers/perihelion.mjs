// Perihelion, WebSocket transport, with the limits that would throttle a load test switched off.
import http from 'node:http';
import { PERIHELION_LOAD_TEST_OPTIONS, listenOnLoopback, runServer } from './common.mjs';

const { createServer, RedisEngine } = await import(new URL('../../packages/server/dist/src/index.js', import.meta.url).href);

// The cluster scenarios run several of these on one Redis (BENCH_REDIS_URL, BENCH_REDIS_PREFIX), or
// on a Redis Cluster (BENCH_REDIS_CLUSTER=1: BENCH_REDIS_URL lists its nodes).
const redisUrl = process.env.BENCH_REDIS_URL;
const redisCluster = process.env.BENCH_REDIS_CLUSTER === '1';

const PATH = '/bayeux';

const bayeux = createServer({
  path: PATH,
  ...PERIHELION_LOAD_TEST_OPTIONS,
  ...(redisUrl ? { engine: new RedisEngine({ url: redisUrl, cluster: redisCluster, prefix: process.env.BENCH_REDIS_PREFIX }) } : {}),
});
const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
bayeux.attach(server);

await runServer({
  name: 'perihelion',
  start: () => bayeux.whenReady().then(() => listenOnLoopback(server, PATH)),
  publish: (key, data) => bayeux.publish(`/bench/${key}`, data),
  stop: async () => {
    await Promise.race([bayeux.close(), new Promise((r) => setTimeout(r, 2000))]);
    server.close();
  },
});
