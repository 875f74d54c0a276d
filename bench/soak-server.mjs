// The server of `npm run soak`: Perihelion configured as `perihelion serve` configures it, with
// short session timeouts (maxInterval 1000 ms, timeout 500 ms) so that abandoned sessions expire
// quickly, in a child process of its own. It publishes the churn traffic itself and answers the
// parent's `sample` messages over IPC with its memory (after a full collection: live data) and
// what it holds.
import { setTimeout as sleep } from 'node:timers/promises';

const { createServer } = await import(new URL('../packages/server/dist/src/index.js', import.meta.url).href);
const { churnRound } = await import(new URL('../packages/server/dist/test/churn-clients.js', import.meta.url).href);

const server = createServer({
  path: '/bayeux',
  open: true,
  maxInterval: 1000,
  timeout: 500,
  heartbeat: 2000,
  presenceGrace: 200,
  // Small histories fill within the first minute: what grows after that is not history.
  historySize: 100,
  handshakeRate: 0,
  maxSessionsPerIp: 0,
  maxWebsocketsPerIp: 0,
  pingInterval: 25_000,
});
server.on('error', (error) => process.stderr.write(`server error: ${error?.message ?? error}\n`));
const address = await server.listen({ port: 0, host: '127.0.0.1' });

let publishing = true;
let published = 0;
const publisher = (async () => {
  let tick = 0;
  while (publishing) {
    await churnRound((channel, data) => server.publish(channel, data), tick++);
    published += 3;
    await sleep(25);
  }
})();

process.on('message', async (message) => {
  if (message.type === 'sample') {
    globalThis.gc?.();
    const memory = process.memoryUsage();
    const stats = server.stats();
    const channels = await server.engine.channels();
    let subscriptions = 0;
    for (const count of channels.values()) subscriptions += count;
    process.send({ type: 'sample', at: Date.now(), rss: memory.rss, heapUsed: memory.heapUsed, external: memory.external, sessions: stats.sessions, subscriptions, queueDrops: stats.queueDrops, published });
  } else if (message.type === 'stop') {
    publishing = false;
    await publisher;
    await server.close();
    process.exit(0);
  }
});
process.send({ type: 'ready', url: `http://127.0.0.1:${address.port}/bayeux` });
