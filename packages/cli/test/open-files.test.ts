/**
 * `perihelion serve` at its limit of open files: every connection is a descriptor, and a server
 * holding many meets `ulimit -n` (often 1024). There it must refuse newcomers and keep serving the
 * connections it has, then take new ones again once some close; it must not die (reading its own
 * memory use opens a file too, and used to throw out of a timer); /metrics says every descriptor
 * is in use.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';
import { BIN, listeningUrl } from './serve-process.js';

const LIMIT = 256;

describe('perihelion serve at its limit of open files', () => {
  it('keeps serving its clients while newcomers are refused, and takes new ones once descriptors are free again', { timeout: 60_000 }, async () => {
    // As `npm start` runs it (the demo page on), with a low limit of descriptors.
    const child = spawn('bash', ['-c', `ulimit -n ${LIMIT} && exec "$0" "$@"`, process.execPath, BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--open'], {
      env: { ...process.env, PORT: '', HOST: '' },
    });
    let errors = '';
    child.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
    const exited = once(child, 'exit');
    const crowd: Socket[] = [];
    let client: Client | undefined;
    try {
      const base = await listeningUrl(child);
      const { port } = new URL(base);
      client = new Client(`${base}/bayeux`, { transports: ['websocket'], WebSocket });
      await client.connect();
      const received: unknown[] = [];
      await client.subscribe('/crowded/room', (data) => void received.push(data));

      // A kept-alive HTTP connection opened before the crowd, to scrape /metrics over during it.
      const scraper = connect(Number(port), '127.0.0.1');
      await once(scraper, 'connect');
      let scraped = '';
      scraper.on('data', (chunk: Buffer) => (scraped += String(chunk)));

      // More connections than the process may hold: the kernel takes them all, the server only
      // as many as it has descriptors for, and closes the rest.
      let closedByServer = 0;
      for (let i = 0; i < LIMIT + 150; i++) {
        const socket = connect(Number(port), '127.0.0.1');
        socket.on('error', () => {});
        socket.on('close', () => closedByServer++);
        crowd.push(socket);
        if (i % 50 === 0) await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Past two readings of the server's memory (once a second), every descriptor in use.
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      assert.equal(child.exitCode, null, `the server died at its limit of open files: ${errors}`);
      assert.ok(closedByServer > 0, 'connections past the limit were refused');
      // /metrics says so: every descriptor open.
      scraper.write('GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n');
      const metricsDeadline = Date.now() + 5_000;
      // The body is chunked: its chunk lines are taken out before reading it.
      const metrics = (): string => scraped.replace(/\r\n[0-9a-f]+\r\n/g, '');
      while (!/^process_open_fds \d+$/m.test(metrics()) && Date.now() < metricsDeadline) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.match(metrics(), new RegExp(`^process_max_fds ${LIMIT}$`, 'm'));
      assert.match(metrics(), new RegExp(`^process_open_fds ${LIMIT}$`, 'm'), 'every descriptor in use');
      scraper.destroy();

      // The session it had still works both ways.
      await client.publish('/crowded/room', 'still here');
      const deadline = Date.now() + 5_000;
      while (received.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.deepEqual(received, ['still here']);

      // Descriptors free again: new clients are served.
      for (const socket of crowd.splice(0)) socket.destroy();
      await new Promise((resolve) => setTimeout(resolve, 300));
      const response = await fetch(`${base}/bayeux`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]) });
      assert.equal(response.status, 200);
      const [reply] = (await response.json()) as { successful: boolean }[];
      assert.equal(reply!.successful, true);

      await client.disconnect();
      child.kill('SIGTERM');
      assert.equal((await exited)[0], 0);
    } finally {
      for (const socket of crowd) socket.destroy();
      await client?.disconnect().catch(() => {});
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
