/**
 * HTTPS and WSS on the server's own listener (`listen({ tls })`), with certificates made by
 * openssl for the test: Bayeux over both, the cookie marked Secure, a certificate replaced while
 * clients stay connected, a handed connection (as `--workers` hands them), and material that
 * cannot serve refused with a message that says why.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { connect as connectTcp, createServer as createTcpServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as connectTls, type PeerCertificate } from 'node:tls';
import { WebSocket } from 'ws';
import { createServer, PerihelionError, type Perihelion, type TlsOptions } from '../src/index.js';

interface Made {
  cert: string;
  key: string;
}

let dir: string;
/** Makes a self-signed certificate for localhost and 127.0.0.1 (`encrypt`: its key under that passphrase). */
function certificate(name: string, encrypt?: string): Made {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', ...(encrypt ? ['-passout', `pass:${encrypt}`] : ['-nodes']), '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
}

let first: Made;
let second: Made;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'perihelion-tls-'));
  first = certificate('first');
  second = certificate('second');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const servers: Perihelion[] = [];
after(async () => Promise.all(servers.map((server) => server.close())));

async function tlsServer(tls: TlsOptions, options = {}): Promise<{ server: Perihelion; port: number }> {
  const server = createServer({ open: true, handshakeRate: 0, pingInterval: 0, drainTimeout: 0, ...options });
  servers.push(server);
  const { port } = await server.listen({ port: 0, host: '127.0.0.1', tls });
  return { server, port };
}

/** A POST over HTTPS trusting `ca`: the status, the Set-Cookie header and the parsed body. */
function post(port: number, body: unknown, ca: string): Promise<{ status: number; cookie: string | undefined; messages: Array<Record<string, unknown>> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/bayeux', method: 'POST', ca, servername: 'localhost', headers: { 'Content-Type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, cookie: res.headers['set-cookie']?.[0], messages: JSON.parse(text) as Array<Record<string, unknown>> }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** A Bayeux session over WSS trusting `ca`, subscribed to `channel`; what it receives on it. */
async function wssSubscriber(port: number, channel: string, ca: string): Promise<{ ws: WebSocket; data: unknown[] }> {
  const ws = new WebSocket(`wss://localhost:${port}/bayeux`, { ca });
  const data: unknown[] = [];
  const replies: Array<Record<string, unknown>> = [];
  ws.on('message', (raw) => {
    for (const message of JSON.parse(String(raw)) as Array<Record<string, unknown>>) {
      if (message.channel === channel && message.data !== undefined) data.push(message.data);
      else replies.push(message);
    }
  });
  await once(ws, 'open');
  ws.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]));
  await waitUntil(() => replies.some((m) => m.channel === '/meta/handshake'));
  const clientId = replies.find((m) => m.channel === '/meta/handshake')!.clientId as string;
  ws.send(JSON.stringify([{ channel: '/meta/subscribe', clientId, subscription: channel }, { channel: '/meta/connect', clientId, connectionType: 'websocket' }]));
  await waitUntil(() => replies.some((m) => m.channel === '/meta/subscribe' && m.successful === true));
  return { ws, data };
}

async function waitUntil(done: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The certificate a new TLS connection to `port` is served. */
async function servedCertificate(port: number, ca: string): Promise<PeerCertificate> {
  const socket = connectTls({ host: '127.0.0.1', port, servername: 'localhost', ca });
  await once(socket, 'secureConnect');
  const peer = socket.getPeerCertificate();
  socket.destroy();
  return peer;
}

describe('TLS: HTTPS and WSS on the server\'s own listener', () => {
  it('serves Bayeux over WSS and HTTPS long-polling, its cookie marked Secure; plain HTTP on that port is told to use https://', async () => {
    const { server, port } = await tlsServer(first);
    const subscriber = await wssSubscriber(port, '/tls/news', first.cert);
    const handshake = await post(port, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], first.cert);
    assert.equal(handshake.status, 200);
    assert.equal(handshake.messages[0]!.successful, true);
    assert.match(handshake.cookie ?? '', /^BAYEUX_BROWSER=[^;]+;.*\bSecure\b/, `the cookie over HTTPS: ${handshake.cookie}`);
    const clientId = handshake.messages[0]!.clientId as string;
    const published = await post(port, [{ channel: '/tls/news', clientId, data: 'over https', id: '1' }], first.cert);
    assert.equal(published.messages[0]!.successful, true);
    await server.publish('/tls/news', 'from the server');
    await waitUntil(() => subscriber.data.length === 2);
    assert.deepEqual(subscriber.data, ['over https', 'from the server']);
    subscriber.ws.close();
    // A client that speaks plain HTTP to it (an http:// URL) is told, in plain HTTP, to use https://.
    const plain = await fetch(`http://127.0.0.1:${port}/bayeux?x=1`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '[]' });
    assert.equal(plain.status, 400);
    assert.equal(await plain.text(), `This port speaks HTTPS: use https://127.0.0.1:${port}/bayeux?x=1 (wss:// for a WebSocket).\n`);
    // Without a request line and Host it can read, it says so without a URL; TLS still serves after it.
    const bare = connectTcp(port, '127.0.0.1');
    let answer = '';
    bare.on('data', (chunk) => (answer += String(chunk)));
    bare.write('GET\r\n\r\n');
    await once(bare, 'close');
    assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n[^]*\r\n\r\nThis port speaks HTTPS: use https:\/\/ \(wss:\/\/ for a WebSocket\)\.\n$/);
    assert.equal((await post(port, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], first.cert)).status, 200);
  });

  it('takes a renewed certificate while it runs: new connections get it, a WebSocket already open goes on', async () => {
    const { server, port } = await tlsServer(first);
    const both = `${first.cert}${second.cert}`;
    const open = await wssSubscriber(port, '/tls/renewed', both);
    assert.equal((await servedCertificate(port, both)).subject.CN, 'first');
    server.reloadTls(second);
    assert.equal((await servedCertificate(port, both)).subject.CN, 'second');
    const opened = await wssSubscriber(port, '/tls/renewed', second.cert);
    await server.publish('/tls/renewed', 'to both');
    await waitUntil(() => open.data.length === 1 && opened.data.length === 1);
    // Material that cannot serve is refused, and the certificate in use stays.
    assert.throws(() => server.reloadTls({ cert: second.cert, key: first.key }), (error: PerihelionError) => error.code === 'ERR_INVALID_OPTION' && /the key is not the certificate's/.test(error.message));
    assert.equal((await servedCertificate(port, both)).subject.CN, 'second');
    open.ws.close();
    opened.ws.close();
  });

  it('refuses a certificate and key that cannot serve, saying why, before it listens', async () => {
    const encrypted = certificate('encrypted', 'correct horse');
    const cases: Array<[TlsOptions, RegExp]> = [
      [{ cert: first.cert, key: second.key }, /the key is not the certificate's/],
      [{ cert: 'not a certificate', key: first.key }, /not PEM/],
      [{ cert: first.cert, key: '' }, /key must be PEM text/],
      [{ cert: 42, key: first.key } as unknown as TlsOptions, /cert must be PEM text \(a string or a Buffer\), got number/],
      [{ cert: encrypted.cert, key: encrypted.key }, /passphrase is missing or wrong/],
      [{ cert: encrypted.cert, key: encrypted.key, passphrase: 'wrong' }, /passphrase is missing or wrong/],
    ];
    for (const [tls, expected] of cases) {
      const server = createServer({ open: true });
      servers.push(server);
      await assert.rejects(server.listen({ port: 0, host: '127.0.0.1', tls }), (error: PerihelionError) => {
        assert.equal(error.code, 'ERR_INVALID_OPTION');
        assert.match(error.message, /^option "tls": /);
        assert.match(error.message, expected);
        return true;
      });
      assert.equal(server.address(), null, 'nothing listens');
    }
    const { port } = await tlsServer({ ...encrypted, passphrase: 'correct horse' });
    assert.equal((await servedCertificate(port, encrypted.cert)).subject.CN, 'encrypted');
    const plain = createServer({ open: true });
    servers.push(plain);
    await plain.listen({ port: 0, host: '127.0.0.1' });
    assert.throws(() => plain.reloadTls(first), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /does not serve TLS/.test(error.message));
  });

  it('closes a connection that never finishes its TLS handshake after bodyTimeout', async () => {
    const { port } = await tlsServer(first, { bodyTimeout: 300 });
    const silent = connectTcp(port, '127.0.0.1');
    await once(silent, 'connect');
    const started = Date.now();
    await once(silent, 'close');
    const waited = Date.now() - started;
    assert.ok(waited >= 250 && waited < 3000, `closed after ${waited} ms`);
  });

  it('closes a plain-HTTP connection that stays open after its 400, after bodyTimeout', async () => {
    const { port } = await tlsServer(first, { bodyTimeout: 300 });
    const lingering = connectTcp({ port, host: '127.0.0.1', allowHalfOpen: true });
    let answer = '';
    lingering.on('data', (chunk) => (answer += String(chunk)));
    lingering.on('error', () => {});
    const closed = new Promise((resolve) => lingering.on('close', resolve));
    lingering.write('POST /bayeux HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n');
    await once(lingering, 'end');
    assert.match(answer, /^HTTP\/1\.1 400 /);
    // The client never closes its side; once the server has let go, what it sends is refused.
    await new Promise((resolve) => setTimeout(resolve, 800));
    // The first write draws the server's reset, the next one fails on it.
    lingering.write('more of the body');
    await new Promise((resolve) => setTimeout(resolve, 100));
    lingering.write('and more');
    await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the server still holds the connection')), 2000))]);
  });

  it('serves handed connections over TLS (as the workers of --workers are handed them)', async () => {
    const server = createServer({ open: true, handshakeRate: 0, pingInterval: 0, drainTimeout: 0 });
    servers.push(server);
    const hand = server.serveHandedConnections({ tls: first });
    const listener = createTcpServer({ pauseOnConnect: true }, hand);
    listener.listen(0, '127.0.0.1');
    await once(listener, 'listening');
    try {
      const { port } = listener.address() as AddressInfo;
      const subscriber = await wssSubscriber(port, '/tls/handed', first.cert);
      await server.publish('/tls/handed', 'handed');
      await waitUntil(() => subscriber.data.length === 1);
      const handshake = await post(port, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], first.cert);
      assert.equal(handshake.messages[0]!.successful, true);
      assert.equal((await fetch(`http://127.0.0.1:${port}/bayeux`)).status, 400, 'plain HTTP on a handed connection');
      subscriber.ws.close();
    } finally {
      listener.close();
    }
  });
});
