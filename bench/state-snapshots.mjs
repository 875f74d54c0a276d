#!/usr/bin/env node
// A storm of snapshot requests on a large state channel, as after a server restart: C WebSocket
// clients (in this process) handshake, then all ask `/service/state` for the snapshot of one
// version at once. The server runs in a child process of its own; printed: its CPU per snapshot
// answered, and how long the storm took. A snapshot of one version is serialised once however
// many ask, and that text is spliced into each client's reply: measured at 200 clients and a
// 0.9 MB value, 3.9 → 1.5 ms of server CPU per snapshot and 830 → 380 ms for the storm (it was
// serialised for each reply before). What is left per client is its frame.
//
// With --relayed the clients are on another node of a cluster (the Redis engine at REDIS_URL,
// default redis://127.0.0.1:6379, under a prefix of its own), which relays each request to the
// node holding the state channel (state/state-relay.ts): printed, each node's CPU per snapshot.
// Measured at 200 clients and a 0.9 MB value: the holder 0.12 ms per snapshot (the 200 requests
// made at once travel as one), the relaying node 2.5 ms (each client's frame: as one server
// answering them all itself, 2.6 ms, same run).
//
//   node bench/state-snapshots.mjs [sizes in items, default 1000,10000] [--clients C, default 200] [--relayed [--inline-bytes N]]
//
// Build first (`npm run build`).
import { fork } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';

if (process.argv[2] === '--server') {
  // The child: one server with one state channel of `items` to-do items (none: 0); answers 'cpu'
  // with its CPU time so far, µs. With a Redis prefix, a node of a cluster there.
  const items = Number(process.argv[3]);
  const prefix = process.argv[4];
  const { createServer, RedisEngine } = await import(new URL('../packages/server/dist/src/index.js', import.meta.url).href);
  const inline = process.env.BENCH_INLINE_BYTES === undefined ? {} : { nodeMessageInlineBytes: Number(process.env.BENCH_INLINE_BYTES) };
  const engine = prefix === undefined ? {} : { engine: new RedisEngine({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', prefix, ...inline }) };
  const bayeux = createServer({ open: true, handshakeRate: 0, maxSessionsPerIp: 0, maxWebsocketsPerIp: 0, pingInterval: 0, ...engine });
  const server = http.createServer();
  bayeux.attach(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  await bayeux.whenReady();
  const todos = items === 0 ? null : await bayeux.state('/todos', { items: Array.from({ length: items }, (_, i) => ({ id: `item-${i}`, title: `Task number ${i}, with some words`, done: false, tags: ['home'] })) });
  await todos?.update((draft) => void (draft.items[0].done = true));
  process.on('message', (message) => {
    if (message === 'cpu') {
      const { user, system } = process.cpuUsage();
      process.send({ cpu: user + system });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ port: server.address().port, bytes: todos === null ? 0 : JSON.stringify(todos.get()).length });
} else {
  const args = process.argv.slice(2);
  let sizes = [1000, 10_000];
  let clients = 200;
  let relayed = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--clients') clients = Number(args[++i]);
    else if (args[i] === '--relayed') relayed = true;
    // The nodes' nodeMessageInlineBytes (0: every snapshot through pub/sub, as before it was stored).
    else if (args[i] === '--inline-bytes') process.env.BENCH_INLINE_BYTES = args[++i];
    else sizes = args[i].split(',').map(Number);
  }
  if (sizes.some((n) => !Number.isSafeInteger(n) || n < 1 || n > 200_000) || !Number.isSafeInteger(clients) || clients < 1 || clients > 5000 || !/^\d+$/.test(process.env.BENCH_INLINE_BYTES ?? '0')) {
    console.error('usage: node bench/state-snapshots.mjs [sizes, each 1 to 200000 items] [--clients 1 to 5000] [--relayed [--inline-bytes N]]');
    process.exit(2);
  }

  /** Deletes what the cluster kept in Redis under `prefix`. */
  const forget = async (prefix) => {
    const { Redis } = await import('ioredis');
    const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
    for (let cursor = '0'; ; ) {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
      if (cursor === '0') break;
    }
    redis.disconnect();
  };

  /** A server in a child process: its port, its state channel's size, and its CPU time so far (µs). */
  const start = async (items, prefix) => {
    const child = fork(fileURLToPath(import.meta.url), ['--server', String(items), ...(prefix === undefined ? [] : [prefix])], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const next = () => new Promise((resolve) => child.once('message', resolve));
    const { port, bytes } = await next();
    const cpu = async () => {
      const answer = next();
      child.send('cpu');
      return (await answer).cpu;
    };
    return { child, port, bytes, cpu };
  };

  /**
   * One storm on fresh servers: the CPU per snapshot (ms) of the node holding the state channel and,
   * with --relayed, of the node the clients are on; and the storm's length (ms).
   */
  const storm = async (items) => {
    const prefix = relayed ? `bench-state-snapshots:${process.pid}:${items}:` : undefined;
    const holder = await start(items, prefix);
    const relay = relayed ? await start(0, prefix) : null;
    const { bytes } = holder;
    const port = (relay ?? holder).port;
    const sockets = [];
    const sessions = [];
    for (let i = 0; i < clients; i++) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/bayeux`, { perMessageDeflate: false, maxPayload: 0 });
      sockets.push(ws);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      const handshaken = new Promise((resolve) => ws.once('message', (data) => resolve(JSON.parse(String(data))[0])));
      ws.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]));
      const reply = await handshaken;
      if (!reply.successful) throw new Error(`handshake refused: ${reply.error}`);
      sessions.push({ ws, clientId: reply.clientId });
    }
    const before = [await holder.cpu(), await relay?.cpu()];
    const started = performance.now();
    await Promise.all(
      sessions.map(
        ({ ws, clientId }) =>
          new Promise((resolve, reject) => {
            // The answer is the frame that carries the value; the first one is checked whole.
            const onMessage = (data) => {
              if (data.length < bytes) return;
              ws.off('message', onMessage);
              if (sessions[0].ws === ws) {
                const answer = JSON.parse(String(data)).find((m) => m.data?.value !== undefined);
                if (answer?.data.version !== 1 || answer.data.value.items.length !== items) reject(new Error(`not the snapshot: ${String(data).slice(0, 200)}`));
              }
              resolve();
            };
            ws.on('message', onMessage);
            ws.send(JSON.stringify([{ channel: '/service/state', clientId, id: 'snap', data: { channel: '/todos', op: 'snapshot' } }]));
          }),
      ),
    );
    const took = performance.now() - started;
    const perSnapshot = (spent) => spent / 1000 / clients;
    const holderCpu = perSnapshot((await holder.cpu()) - before[0]);
    const relayCpu = relay ? perSnapshot((await relay.cpu()) - before[1]) : null;
    for (const ws of sockets) ws.terminate();
    holder.child.kill();
    relay?.child.kill();
    if (prefix !== undefined) await forget(prefix);
    return { bytes, holderCpu, relayCpu, took };
  };

  console.log(relayed ? '| items | JSON MB | clients | holder CPU ms per snapshot | relaying node CPU ms per snapshot | storm ms |' : '| items | JSON MB | clients | server CPU ms per snapshot | storm ms |');
  console.log(relayed ? '| ---: | ---: | ---: | ---: | ---: | ---: |' : '| ---: | ---: | ---: | ---: | ---: |');
  for (const items of sizes) {
    console.error(`state-snapshots: ${items} items, ${clients} clients ask at once${relayed ? ' through another node' : ''}…`);
    const { bytes, holderCpu, relayCpu, took } = await storm(items);
    console.log(`| ${items} | ${(bytes / 1e6).toFixed(2)} | ${clients} | ${holderCpu.toFixed(2)} |${relayCpu === null ? '' : ` ${relayCpu.toFixed(2)} |`} ${took.toFixed(0)} |`);
  }
  process.exit(0);
}
