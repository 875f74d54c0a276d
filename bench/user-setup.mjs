#!/usr/bin/env node
// The set-up of authenticated users at growing sizes, beside anonymous clients: the server's CPU
// per connection while WebSocket clients (in this process) handshake, each as its own user or
// anonymous, and subscribe to one channel, 100 at a time; the server runs in a child process of
// its own. Presence is on (the default): a user's first subscribe to a channel asks the engine
// whether the user is there already. What one user costs must not grow with the users already
// there: users ÷ anonymous stays flat as the size grows (measured: 1.20, 1.18, 1.01 at 2 000,
// 8 000, 16 000; it was 1.24, 1.65, 3.05 while the memory engine found a user's sessions by
// walking every session).
//
//   node bench/user-setup.mjs [sizes, default 2000,8000,16000]
//
// Build first (`npm run build`). Each size runs anonymous, users, users, anonymous on fresh
// servers, and averages each pair: whatever a previous set-up left weighs on both alike.
import { fork } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';

const AT_ONCE = 100;

if (process.argv[2] === '--server') {
  // The child: one server; it answers 'cpu' with its CPU time so far, µs.
  const { createServer } = await import(new URL('../packages/server/dist/src/index.js', import.meta.url).href);
  const bayeux = createServer({
    open: true,
    handshakeRate: 0,
    maxSessionsPerIp: 0,
    maxWebsocketsPerIp: 0,
    maxSubscriptionsPerIp: 0,
    pingInterval: 0,
    // The application's authenticator: the user a handshake names in ext.user (none: anonymous).
    authenticate: ({ message }) => (typeof message.ext?.user === 'string' ? { id: message.ext.user } : null),
  });
  const server = http.createServer();
  bayeux.attach(server);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  await bayeux.whenReady();
  process.on('message', (message) => {
    if (message === 'cpu') {
      const { user, system } = process.cpuUsage();
      process.send({ cpu: user + system });
    }
  });
  // Its parent gone (done, or failed half-way), it goes too.
  process.on('disconnect', () => process.exit(0));
  process.send({ port: server.address().port });
} else {
  const sizes = (process.argv[2] ?? '2000,8000,16000').split(',').map(Number);
  if (sizes.some((n) => !Number.isSafeInteger(n) || n < 1 || n > 18_000)) {
    console.error(`usage: node bench/user-setup.mjs [sizes: comma-separated integers from 1 to 18000 (open files)], got ${process.argv[2]}`);
    process.exit(2);
  }

  /** Sets up `count` clients on a fresh server; resolves to the server's CPU per connection, µs. */
  const setUp = async (count, users) => {
    const child = fork(fileURLToPath(import.meta.url), ['--server'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const next = () => new Promise((resolve) => child.once('message', resolve));
    const { port } = await next();
    const cpu = async () => {
      const answer = next();
      child.send('cpu');
      return (await answer).cpu;
    };
    const url = `ws://127.0.0.1:${port}/bayeux`;
    const sockets = [];
    const one = async (i) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      sockets.push(ws);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      const answer = (channel) =>
        new Promise((resolve, reject) => {
          const onMessage = (data) => {
            const reply = JSON.parse(String(data)).find((m) => m.channel === channel);
            if (!reply) return;
            ws.off('message', onMessage);
            if (reply.successful) resolve(reply);
            else reject(new Error(`${channel} refused: ${reply.error}`));
          };
          ws.on('message', onMessage);
        });
      const handshaken = answer('/meta/handshake');
      ws.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ...(users ? { ext: { user: `user-${i}` } } : {}) }]));
      const { clientId } = await handshaken;
      const subscribed = answer('/meta/subscribe');
      ws.send(JSON.stringify([{ channel: '/meta/subscribe', clientId, subscription: '/lobby' }]));
      await subscribed;
    };
    const before = await cpu();
    for (let i = 0; i < count; i += AT_ONCE) await Promise.all(Array.from({ length: Math.min(AT_ONCE, count - i) }, (_, k) => one(i + k)));
    const spent = (await cpu()) - before;
    for (const ws of sockets) ws.terminate();
    child.kill();
    return spent / count;
  };

  console.log('| connections | anonymous, server µs per connection | users, server µs per connection | users ÷ anonymous |');
  console.log('| ---: | ---: | ---: | ---: |');
  for (const size of sizes) {
    console.error(`user-setup: ${size} clients, anonymous and users, twice each…`);
    const first = await setUp(size, false);
    const users = ((await setUp(size, true)) + (await setUp(size, true))) / 2;
    const anonymous = (first + (await setUp(size, false))) / 2;
    console.log(`| ${size} | ${anonymous.toFixed(0)} | ${users.toFixed(0)} | ${(users / anonymous).toFixed(2)} |`);
  }
  process.exit(0);
}
