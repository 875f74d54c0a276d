/// <reference path="../../server/test/third-party.d.ts" />
/**
 * `perihelion serve --workers 2`: two processes on one port act as one server without Redis. The
 * primary hands each new connection to the next worker; a client whose every request opens a new
 * connection is served whichever worker gets it (its requests are forwarded to the worker that
 * holds its session), and a publish on either worker reaches every client. Each worker killed in
 * turn with SIGKILL is replaced, its clients start new sessions and recover from the history the
 * primary keeps, and SIGTERM stops the whole server.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { request } from 'node:http';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';
import { adapt } from 'cometd-nodejs-client';
import { AckExtension, CometD, type Message as CometDMessage } from 'cometd';
import faye from 'faye';
import { BIN, listeningUrl, start } from './serve-process.js';

adapt();

const KEY = 'workers-test-api-key-0123';

/** A fetch whose every request opens its own connection (no keep-alive): each may reach another worker. */
const freshFetch: typeof fetch = async (input, init = {}) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const headers: Record<string, string> = {};
  new Headers(init.headers).forEach((value, name) => (headers[name] = value));
  const body = init.body === undefined || init.body === null ? undefined : String(init.body);
  return new Promise<Response>((resolve, reject) => {
    const req = request(url, { method: init.method ?? 'GET', headers: { ...headers, connection: 'close' }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      // A worker killed mid-answer: the response ends without its end.
      res.on('close', () => {
        if (!res.complete) reject(new Error('the connection closed mid-response'));
      });
      res.on('end', () => {
        const responseHeaders = new Headers();
        for (const [name, value] of Object.entries(res.headers)) if (value !== undefined) responseHeaders.set(name, [value].flat().join(', '));
        resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 500, headers: responseHeaders }));
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    init.signal?.addEventListener('abort', () => req.destroy(new Error('aborted')));
    req.end(body);
  });
};

type Outcome = 'answered' | 'closed' | 'hung';

/** One request on a connection of its own: "answered", "closed" (its client would retry at once) or "hung" (no answer in 5 s). */
function dialOnce(port: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve('hung');
    }, 5_000);
    socket.on('connect', () => socket.write('GET /nothing-here HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'));
    socket.on('data', (chunk: Buffer) => (data += String(chunk)));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data.startsWith('HTTP/1.1 404') ? 'answered' : 'closed');
    });
  });
}

async function waitFor(what: string | (() => string), predicate: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('perihelion serve --workers 2', () => {
  it('serves clients through both workers as one server, replaces each killed worker (its clients recover every message), and stops on SIGTERM', { timeout: 60_000 }, async () => {
    const child = start(['--workers', '2', '--open'], { PERIHELION_API_KEY: KEY });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
    child.stderr.resume();
    const exited = once(child, 'exit');
    const clients: Client[] = [];
    try {
      const base = await listeningUrl(child);
      await waitFor('the whole summary and two workers', () => output.includes('dashboard:') && (output.match(/worker w\d+-\d+: pid \d+/g) ?? []).length === 2);
      assert.match(output, /2 workers on one port/);
      assert.match(output, /engine: workers \(2 processes/);
      const pids = [...output.matchAll(/worker w\d+-\d+: pid (\d+)/g)].map((m) => Number(m[1]));

      const channel = '/workers/room';
      const received: number[][] = [];
      // Four WebSocket clients and a long-polling one, every request and socket on a connection
      // of its own: the primary hands connections to the workers in turn.
      for (let i = 0; i < 5; i++) {
        const client = new Client(`${base}/bayeux`, { transports: [i < 4 ? 'websocket' : 'long-polling'], WebSocket, fetch: freshFetch });
        clients.push(client);
        await client.connect();
        const mine: number[] = [];
        received.push(mine);
        await client.subscribe(channel, (data) => mine.push(data as number));
      }
      const publishApi = async (data: number): Promise<void> => {
        const response = await freshFetch(`${base}/api/publish`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ channel, data }) });
        assert.equal(response.status, 200, await response.text());
      };
      // Through the HTTP API (each call to the next worker) and through the clients, in turn.
      for (let n = 0; n < 20; n++) await (n % 2 === 0 ? publishApi(n) : clients[n % 5]!.publish(channel, n));
      await waitFor('20 messages at every client', () => received.every((r) => r.length >= 20));

      // Each of the two workers dies in turn: the primary starts another; the clients of the dead
      // one come back with new sessions and recover what they missed from the primary's history.
      const first = clients.map((client) => client.clientId);
      for (const [round, pid] of pids.entries()) {
        process.kill(pid, 'SIGKILL');
        // Taking connections, not only started: with the other worker killed next, no worker
        // would be left (the primary keeps connections waiting for one, at most 10 s).
        // Both first workers and each replacement so far say so.
        await waitFor('a new worker taking connections', () => (output.match(/worker w\d+-\d+ \(pid \d+\) takes connections/g) ?? []).length === round + 3, 15_000);
        for (let n = 20 * (round + 1); n < 20 * (round + 2); n++) {
          await publishApi(n);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        const total = 20 * (round + 2);
        await waitFor(() => `${total} messages at every client (have ${received.map((r) => r.length).join(', ')})`, () => received.every((r) => r.length >= total), 20_000);
      }
      assert.equal((output.match(/exited \(SIGKILL\)/g) ?? []).length, 2, output);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const expected = Array.from({ length: 60 }, (_, n) => n);
      received.forEach((r, i) => assert.deepEqual(r, expected, `client ${i}: every message once, in order`));
      clients.forEach((client, i) => assert.notEqual(client.clientId, first[i], `client ${i} has a new session: both workers it could be on are gone`));

      await Promise.all(clients.splice(0).map((client) => client.disconnect()));
      child.kill('SIGTERM');
      const [code] = await exited;
      assert.equal(code, 0);
      const replacements = [...output.matchAll(/worker w\d+-\d+: pid (\d+)/g)].map((m) => Number(m[1])).slice(2);
      for (const pid of replacements) assert.throws(() => process.kill(pid, 0), 'the workers are gone');
    } finally {
      await Promise.allSettled(clients.map((client) => client.disconnect()));
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('answers or closes every connection made while a worker dies, never leaves one hanging', { timeout: 60_000 }, async (t) => {
    const child = start(['--workers', '2', '--open', '--no-demo']);
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
    child.stderr.resume();
    const exited = once(child, 'exit');
    try {
      const { port } = new URL(await listeningUrl(child));
      const pids = (): number[] => [...output.matchAll(/worker w\d+-\d+: pid (\d+)/g)].map((m) => Number(m[1]));
      // Both taking connections: one killed before the other is ready would leave nobody to answer.
      await waitFor('two workers taking connections', () => pids().length === 2 && (output.match(/takes connections/g) ?? []).length === 2);
      const dial = (): Promise<Outcome> => dialOnce(Number(port));
      const outcomes: Outcome[] = [];
      for (let round = 0; round < 3; round++) {
        const pending: Promise<Outcome>[] = [];
        for (let i = 0; i < 10; i++) pending.push(dial());
        process.kill(pids().at(-2)!, 'SIGKILL');
        // Connections keep coming while the primary learns of the death.
        for (let i = 0; i < 40; i++) {
          pending.push(dial());
          await new Promise((resolve) => setImmediate(resolve));
        }
        outcomes.push(...(await Promise.all(pending)));
        await waitFor('the replacement taking connections', () => (output.match(/takes connections/g) ?? []).length === round + 3, 15_000);
      }
      const count = (outcome: Outcome): number => outcomes.filter((o) => o === outcome).length;
      const tally = `of ${outcomes.length} connections ${count('answered')} answered, ${count('closed')} closed, ${count('hung')} hung`;
      t.diagnostic(tally);
      assert.equal(count('hung'), 0, tally);
      // Connections go to the workers in turn: the live one answers its half whatever happens;
      // of the dying one's, those handed before the primary learns of the death are closed (more
      // of them on a busy machine, where the news comes later).
      assert.ok(count('answered') >= outcomes.length / 2 - 5, `the live worker answers its share: ${tally}`);
      // And the server still serves everyone.
      assert.equal(await dial(), 'answered');
      // A kept-alive connection, idle after its answer: SIGTERM closes it at once (the worker's
      // node:http tracks the connections it is handed) instead of waiting for keepAliveTimeout.
      const idle = connect(Number(port), '127.0.0.1');
      idle.on('error', () => {});
      idle.write('GET /nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n');
      await once(idle, 'data');
      const idleClosed = once(idle, 'close');
      const stoppedAt = Date.now();
      child.kill('SIGTERM');
      assert.equal((await exited)[0], 0);
      await idleClosed;
      assert.ok(Date.now() - stoppedAt < 3_000, `stopped in ${Date.now() - stoppedAt} ms, not after the 5 s keep-alive`);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('hands no new connection to a worker alive but stuck (stopped with SIGSTOP) while the other answers, and takes it back once it answers', { timeout: 60_000 }, async () => {
    const child = start(['--workers', '2', '--open', '--no-demo']);
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
    child.stderr.resume();
    const exited = once(child, 'exit');
    let stopped: number | undefined;
    try {
      const port = Number(new URL(await listeningUrl(child)).port);
      const pids = (): number[] => [...output.matchAll(/worker w\d+-\d+: pid (\d+)/g)].map((m) => Number(m[1]));
      await waitFor('two workers taking connections', () => pids().length === 2 && (output.match(/takes connections/g) ?? []).length === 2);
      stopped = pids()[0]!;
      process.kill(stopped, 'SIGSTOP');
      await waitFor('the primary to notice', () => output.includes(`(pid ${stopped}) has not answered for 2 s`), 10_000);
      // Every connection from now on is answered: none goes to the stopped worker.
      const outcomes = await Promise.all(Array.from({ length: 10 }, () => dialOnce(port)));
      assert.deepEqual(outcomes, Array(10).fill('answered'), 'every connection answered by the worker that answers');

      process.kill(stopped, 'SIGCONT');
      stopped = undefined;
      await waitFor('the worker heard again', () => /answers again and takes connections/.test(output), 10_000);
      assert.deepEqual(await Promise.all(Array.from({ length: 4 }, () => dialOnce(port))), Array(4).fill('answered'));
      child.kill('SIGTERM');
      assert.equal((await exited)[0], 0);
    } finally {
      if (stopped !== undefined) process.kill(stopped, 'SIGCONT');
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('drains on SIGTERM as one process does: connections are still taken, new sessions refused with a reason, and a client collects what it is owed', { timeout: 60_000 }, async () => {
    const child = start(['--workers', '2', '--open', '--drain-timeout', '4000']);
    child.stdout.resume();
    child.stderr.resume();
    const exited = once(child, 'exit');
    try {
      const base = await listeningUrl(child);
      const bayeux = async (messages: object[]): Promise<Record<string, unknown>[]> => {
        const response = await freshFetch(`${base}/bayeux`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(messages) });
        assert.equal(response.status, 200);
        return (await response.json()) as Record<string, unknown>[];
      };
      // A long-polling session with a message waiting and no connect to carry it: the drain waits for it.
      const [hello] = await bayeux([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
      const clientId = hello!.clientId as string;
      assert.equal((await bayeux([{ channel: '/meta/subscribe', clientId, subscription: '/drain/owed' }]))[0]!.successful, true);
      assert.equal((await bayeux([{ channel: '/drain/owed', clientId, data: 'owed' }]))[0]!.successful, true);

      child.kill('SIGTERM');
      await new Promise((resolve) => setTimeout(resolve, 300));
      // A newcomer on a connection of its own is answered, and told why (not refused a connection).
      const [refused] = await bayeux([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
      assert.equal(refused!.successful, false);
      assert.match(String(refused!.error), /shutting down/);
      // The waiting session collects its message on a new connection.
      const replies = await bayeux([{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
      assert.deepEqual(replies.filter((m) => m.channel === '/drain/owed').map((m) => m.data), ['owed']);
      assert.equal((await exited)[0], 0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('serves CometD (with its ack extension) and Faye in their plain setup, over long-polling and WebSocket', { timeout: 30_000 }, async () => {
    const child = start(['--workers', '2', '--open']);
    child.stderr.resume();
    const stops: (() => Promise<unknown>)[] = [];
    try {
      const url = `${await listeningUrl(child)}/bayeux`;
      const channel = '/workers/third-party';
      const received = new Map<string, unknown[]>();
      for (const transport of ['long-polling', 'websocket'] as const) {
        const cometd = new CometD();
        cometd.unregisterTransport(transport === 'websocket' ? 'long-polling' : 'websocket');
        cometd.configure({ url, logLevel: 'warn' });
        cometd.registerExtension('ack', new AckExtension());
        const data: unknown[] = [];
        received.set(`CometD ${transport}`, data);
        stops.push(() => new Promise((resolve) => cometd.disconnect(resolve)));
        await new Promise<void>((resolve, reject) =>
          cometd.handshake((reply) => {
            if (!reply.successful) return reject(new Error(JSON.stringify(reply)));
            cometd.subscribe(channel, (message: CometDMessage) => void data.push(message.data), (sub) => (sub.successful ? resolve() : reject(new Error(JSON.stringify(sub)))));
          }),
        );
        const client = new faye.Client(url);
        if (transport === 'long-polling') client.disable('websocket');
        const fayeData: unknown[] = [];
        received.set(`Faye ${transport}`, fayeData);
        stops.push(async () => client.disconnect());
        await client.subscribe(channel, (value) => void fayeData.push(value));
      }
      const publisher = new faye.Client(url);
      publisher.disable('websocket');
      stops.push(async () => publisher.disconnect());
      for (let n = 0; n < 30; n++) await publisher.publish(channel, n);
      await waitFor(() => `30 messages at every client (${[...received].map(([name, data]) => `${name}: ${data.length}`).join(', ')})`, () => [...received.values()].every((data) => data.length >= 30));
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const [name, data] of received) assert.deepEqual(data, Array.from({ length: 30 }, (_, n) => n), `${name}: every message once, in order`);
    } finally {
      await Promise.allSettled(stops.map((stop) => Promise.race([stop(), new Promise((resolve) => setTimeout(resolve, 1000))])));
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    }
  });

  it('serves CometD clients of one process (one cookie jar) that handshake at once on both workers, each on its first session', { timeout: 30_000 }, async () => {
    const child = start(['--workers', '2', '--open', '--no-demo'], { PERIHELION_API_KEY: KEY });
    child.stderr.resume();
    try {
      const base = await listeningUrl(child);
      const channel = '/workers/one-jar';
      // A script of its own, as users run cometd-nodejs-client: its cookie jar is the process's.
      const script = fileURLToPath(new URL('../../../../examples/cluster/cometd-one-jar.mjs', import.meta.url));
      const jar = spawn(process.execPath, [script, `${base}/bayeux`, channel, '4', '3'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let result: unknown;
      for await (const line of createInterface({ input: jar.stdout })) {
        if (line !== 'ready') result = JSON.parse(line);
        else {
          for (let n = 0; n < 3; n++) {
            const published = await fetch(`${base}/api/publish`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ channel, data: n }) });
            assert.equal(published.status, 200, await published.text());
          }
        }
      }
      assert.deepEqual(result, Array.from({ length: 4 }, () => ({ handshakes: 1, received: [0, 1, 2] })));
    } finally {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    }
  });

  it('serves the demo gallery from both workers: one board and one deck of slides, whichever worker a client is on', { timeout: 30_000 }, async () => {
    // As users start it: the demo on (start() turns it off).
    const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--workers', '2'], { env: { ...process.env, PORT: '', HOST: '' } });
    let output = '';
    let errors = '';
    child.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
    child.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
    const clients: Client[] = [];
    try {
      const url = await listeningUrl(child);
      await waitFor('two workers taking connections and the summary', () => (output.match(/takes connections/g) ?? []).length === 2 && /dashboard: /.test(output));
      assert.match(output, /demo page: http/);
      // Each request on a connection of its own: the sessions are made on both workers.
      for (let i = 0; i < 4; i++) {
        const c = new Client(`${url}/bayeux`, { transports: ['long-polling'], fetch: freshFetch });
        clients.push(c);
        await c.connect();
      }
      type Board = { epoch: string; version: number; value: Array<{ id: string }> };
      for (const [i, c] of clients.entries()) {
        const board = (await c.request('/service/state', { channel: '/demo/board', op: 'snapshot' })) as Board;
        await c.request('/service/state', { channel: '/demo/board', op: 'propose', epoch: board.epoch, base: board.version, patch: [{ op: 'add', path: '/-', value: { id: `c${i}`, text: `client ${i}`, done: false } }], id: `p${i}` });
      }
      const boards = (await Promise.all(clients.map((c) => c.request('/service/state', { channel: '/demo/board', op: 'snapshot' })))) as Board[];
      assert.equal(new Set(boards.map((b) => b.epoch)).size, 1, 'one board');
      for (const board of boards) assert.deepEqual(board.value.map((item) => item.id).slice(-4), ['c0', 'c1', 'c2', 'c3']);
      assert.doesNotMatch(errors, /ERR_STATE_DUPLICATE/);
    } finally {
      await Promise.all(clients.map((c) => c.disconnect().catch(() => {})));
      child.kill('SIGKILL');
    }
  });

  it('says an option the server refuses once, before any worker starts (exit code 2)', { timeout: 30_000 }, async () => {
    const child = start(['--workers', '2'], { PERIHELION_API_KEY: 'short' });
    let errors = '';
    child.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
    const [code] = await once(child, 'exit');
    assert.equal(code, 2, errors);
    assert.equal(errors.match(/PERIHELION_API_KEY must be a string of at least 16 characters/g)?.length, 1, errors);
    assert.doesNotMatch(errors, /refused the configuration/, 'no worker was started');
  });

  it('stops with exit code 2 and the reason when its workers refuse to start, instead of replacing them for ever', { timeout: 30_000 }, async () => {
    // Found only where the server starts, in each worker: Redis is not there.
    const child = start(['--workers', '2', '--redis', 'redis://127.0.0.1:1']);
    let errors = '';
    let output = '';
    child.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
    child.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code] = await once(child, 'exit');
    clearTimeout(timer);
    assert.equal(code, 2, `${output}\n${errors}`);
    assert.match(errors, /cannot use Redis at redis:\/\/127\.0\.0\.1:1/);
    assert.match(errors, /refused the configuration; stopping/);
    assert.doesNotMatch(output, /starting another/, 'no worker was replaced');
  });

  it('refuses a bad --workers with a clear message and exit code 2', async () => {
    const child = start(['--workers', 'many']);
    let errors = '';
    child.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
    const [code] = await once(child, 'exit');
    assert.equal(code, 2);
    assert.match(errors, /workers \(--workers, PERIHELION_WORKERS\) must be a number of processes from 1 to 256, or auto, got "many"/);
  });
});
