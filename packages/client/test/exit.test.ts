/**
 * Closing leaves nothing running: a program that closes its server and disconnects its clients
 * exits by itself, whatever was in use (every transport, state, presence, the Redis engine) and in
 * whichever order it stops them. Each case runs in a child process and must end on its own; one
 * that does not names what still holds the event loop (a timer, a socket), and the test says so,
 * instead of leaving the suite's process waiting for ever.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { requireRedis } from './helpers.js';

/** The program: a server, one client per transport doing a bit of everything, then the stop. */
const PROGRAM = `
import { createServer, RedisEngine } from '@perihelion/server';
import { Client } from '@perihelion/client';
import { replicate } from '@perihelion/state';
import { WebSocket } from 'ws';

const order = process.env.STOP_ORDER;
const engine = process.env.ENGINE === 'redis' ? new RedisEngine({ url: 'redis://127.0.0.1:6379', prefix: 'exit-test-' + process.pid + ':' }) : undefined;
const server = createServer({ open: true, ...(engine ? { engine } : {}) });
const { port } = await server.listen({ port: 0, host: '127.0.0.1' });
const url = 'http://127.0.0.1:' + port + '/bayeux';
const state = await server.state('/doc', { n: 0 });
server.subscribe('/service/echo', ({ data }) => data);
const clients = ['websocket', 'long-polling', 'http-streaming'].map((type) => new Client(url, { WebSocket, transports: [type], shared: false }));
const got = [];
const replicas = [];
for (const client of clients) {
  await client.subscribe('/x', (data) => got.push(data));
  await client.onPresence('/x', () => {});
  replicas.push(await replicate(client, '/doc'));
  await client.request('/service/echo', { ping: 1 });
}
await clients[0].publish('/x', 'from a client');
await server.publish('/x', 'from the server');
await state.update((draft) => { draft.n = 1; });
const started = Date.now();
while ((got.length < 2 * clients.length || replicas.some((replica) => replica.version < 1)) && Date.now() - started < 5000) await new Promise((resolve) => setTimeout(resolve, 20));
if (got.length !== 2 * clients.length) throw new Error('the clients got ' + got.length + ' messages, not ' + 2 * clients.length);

if (order === 'server-first') {
  // The server goes while its clients are live: they lose their lines and try again until told to stop.
  await server.close();
  await new Promise((resolve) => setTimeout(resolve, 300));
  await Promise.all(replicas.map((replica) => replica.close().catch(() => {})));
  await Promise.all(clients.map((client) => client.disconnect().catch(() => {})));
} else {
  await Promise.all(replicas.map((replica) => replica.close()));
  await Promise.all(clients.map((client) => client.disconnect()));
  await server.close();
}
// Not a reason to stay: if anything else keeps the process, this says what, and fails.
setTimeout(() => {
  console.log('still running: ' + JSON.stringify(process.getActiveResourcesInfo()));
  process.exit(3);
}, 5000).unref();
`;

/** Runs the program; resolves with its exit code and output. */
function run(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', PROGRAM], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    // A program still alive long after its own 5 s report cannot end by itself at all.
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, output });
    });
  });
}

describe('a program that closes its server and disconnects its clients exits by itself', () => {
  for (const engine of ['memory', 'redis']) {
    for (const order of ['clients-first', 'server-first']) {
      it(`${engine} engine, ${order === 'clients-first' ? 'clients disconnected, then the server closed' : 'the server closed under its live clients, then the clients disconnected'}`, { timeout: 60_000 }, async () => {
        if (engine === 'redis') await requireRedis();
        const { code, output } = await run({ ENGINE: engine, STOP_ORDER: order });
        assert.equal(code, 0, `the program did not end by itself (exit code ${code}):\n${output}`);
      });
    }
  }
});
