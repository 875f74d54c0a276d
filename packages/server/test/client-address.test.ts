/**
 * The client's address behind a reverse proxy (`trustProxy`): who a request's `X-Forwarded-For`
 * may name, and the per-address limits counting each client behind a trusted proxy on its own,
 * first with the header written by the test, then through a real nginx.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { createServer } from '../src/index.js';
import { ProxyTrust, proxyEntryProblem } from '../src/http/client-address.js';
import { freePort, sessionRecord, startServer, waitFor, type TestServer } from './helpers.js';

describe('trustProxy: whom X-Forwarded-For (or Forwarded, or X-Real-IP) may name', () => {
  const resolve = (entries: string[], peer: string, forwarded?: string): string | undefined =>
    new ProxyTrust(entries).clientAddress(peer, forwarded === undefined ? {} : { 'x-forwarded-for': forwarded });

  it('believes the header only from a trusted peer', () => {
    assert.equal(resolve([], '127.0.0.1', '203.0.113.9'), '127.0.0.1', 'no proxy trusted: the peer');
    assert.equal(resolve(['loopback'], '198.51.100.7', '203.0.113.9'), '198.51.100.7', 'a peer that is not a trusted proxy: its header is anyone\'s');
    assert.equal(resolve(['loopback'], '127.0.0.1', '203.0.113.9'), '203.0.113.9');
    assert.equal(resolve(['loopback'], '::ffff:127.0.0.1', '203.0.113.9'), '203.0.113.9', 'an IPv4 peer on a dual-stack socket');
    assert.equal(resolve(['loopback'], '127.0.0.1'), '127.0.0.1', 'a trusted proxy that forwarded no address');
  });

  it('reads the list from the right, stopping at the first hop that is not a trusted proxy', () => {
    // A client writing its own header cannot pass for another: only what trusted proxies added counts.
    assert.equal(resolve(['loopback', 'private'], '127.0.0.1', '1.1.1.1, 203.0.113.9, 10.0.0.2'), '203.0.113.9');
    assert.equal(resolve(['127.0.0.1'], '127.0.0.1', '1.1.1.1, 203.0.113.9, 10.0.0.2'), '10.0.0.2', 'a proxy not in the list is where the trust ends');
    assert.equal(resolve(['10.0.0.0/8', '127.0.0.1'], '127.0.0.1', '10.1.2.3, 10.0.0.2'), '10.1.2.3', 'every hop trusted: the first');
    assert.equal(resolve(['loopback', 'private'], '127.0.0.1', '203.0.113.9, unknown, 10.0.0.2'), '10.0.0.2', 'a hop that is not an address ends the walk at the proxy that wrote it');
    assert.equal(resolve(['loopback'], '127.0.0.1', 'unknown'), '127.0.0.1');
    assert.equal(resolve(['loopback'], '127.0.0.1', ''), '127.0.0.1');
  });

  it('takes the ports and brackets some proxies add off the address, and IPv6', () => {
    assert.equal(resolve(['loopback'], '127.0.0.1', '203.0.113.9:51234'), '203.0.113.9');
    assert.equal(resolve(['loopback'], '::1', '[2001:db8::7]:443'), '2001:db8::7');
    assert.equal(resolve(['loopback'], '::1', '2001:db8::7'), '2001:db8::7');
    assert.equal(resolve(['fd00::/8'], 'fd00::5', '2001:db8::7, fd00::1'), '2001:db8::7');
  });

  it('reads Forwarded (RFC 7239) or X-Real-IP from a trusted proxy that sends no X-Forwarded-For, and X-Forwarded-For first', () => {
    const from = (entries: string[], peer: string, headers: Record<string, string>): string | undefined => new ProxyTrust(entries).clientAddress(peer, headers);
    assert.equal(from(['loopback'], '127.0.0.1', { forwarded: 'for=203.0.113.9;proto=https;by=127.0.0.1' }), '203.0.113.9');
    assert.equal(from(['loopback'], '::1', { forwarded: 'For="[2001:db8:cafe::17]:4711"' }), '2001:db8:cafe::17', 'a quoted IPv6 address with a port; the name in any case');
    assert.equal(from(['loopback'], '127.0.0.1', { forwarded: 'for="192.0.2.43:47011"' }), '192.0.2.43');
    assert.equal(from(['loopback', 'private'], '127.0.0.1', { forwarded: 'for=1.1.1.1, for=203.0.113.9;proto=http, for=10.0.0.2' }), '203.0.113.9', 'read from the right, as X-Forwarded-For');
    assert.equal(from(['loopback', 'private'], '127.0.0.1', { forwarded: 'for=203.0.113.9, for=_hidden, for=10.0.0.2' }), '10.0.0.2', 'an obfuscated hop ends the walk at the proxy that wrote it');
    assert.equal(from(['loopback'], '127.0.0.1', { forwarded: 'proto=https;by=10.0.0.1' }), '127.0.0.1', 'an element without for=');
    assert.equal(from(['loopback'], '127.0.0.1', { 'x-real-ip': '203.0.113.9' }), '203.0.113.9');
    assert.equal(from(['loopback'], '127.0.0.1', { 'x-real-ip': 'not an address' }), '127.0.0.1');
    assert.equal(from(['loopback'], '127.0.0.1', { 'x-forwarded-for': '198.51.100.1', forwarded: 'for=203.0.113.9', 'x-real-ip': '192.0.2.1' }), '198.51.100.1', 'X-Forwarded-For first');
    assert.equal(from(['loopback'], '127.0.0.1', { forwarded: 'for=203.0.113.9', 'x-real-ip': '192.0.2.1' }), '203.0.113.9', 'then Forwarded');
    assert.equal(from(['loopback'], '198.51.100.7', { forwarded: 'for=203.0.113.9', 'x-real-ip': '192.0.2.1' }), '198.51.100.7', 'neither from a peer that is not trusted');
  });

  it('accepts addresses, ranges, loopback and private, and says what else it wanted', () => {
    for (const entry of ['10.0.0.1', '10.0.0.0/8', '0.0.0.0/0', '::1', 'fd00::/8', '::/0', 'loopback', 'private']) assert.equal(proxyEntryProblem(entry), undefined, entry);
    for (const entry of ['10.0.0.0/33', '::/129', '10.0.0/8', 'proxy.example.com', '10.0.0.0/8/1', '10.0.0.0/', '10.0.0.0/x', '', 'LOOPBACK', 'constructor']) {
      assert.match(proxyEntryProblem(entry) ?? '', /is not an address, a range \(10\.0\.0\.0\/8, fd00::\/8\), loopback or private/, entry);
    }
    assert.throws(() => createServer({ trustProxy: ['10.0.0.0/8', 'nginx'] }), /option "trustProxy": "nginx" is not an address, a range/);
    assert.throws(() => createServer({ trustProxy: '10.0.0.1' as unknown as string[] }), /option "trustProxy" must be a list of addresses or ranges/);
    assert.deepEqual(createServer({ trustProxy: [' 10.0.0.1 '] }).options.trustProxy, ['10.0.0.1']);
  });
});

/** POSTs a Bayeux handshake from `localAddress` (a loopback address of this machine) with `headers`: the HTTP status and reply. */
function handshakeFrom(url: string, localAddress: string, headers: Record<string, string> = {}): Promise<{ status: number; reply: Record<string, unknown> }> {
  const body = JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', localAddress, headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, reply: (JSON.parse(text) as Record<string, unknown>[])[0]! }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Opens a WebSocket from `localAddress` with `headers`: the socket once open, or the HTTP status that refused it. */
function socketFrom(url: string, localAddress: string, headers: Record<string, string> = {}): Promise<WebSocket | number> {
  const ws = new WebSocket(url, { localAddress, headers });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

describe('trustProxy: the per-address limits count each client behind the proxy', () => {
  const servers: TestServer[] = [];
  const sockets: WebSocket[] = [];
  after(async () => {
    for (const ws of sockets) ws.terminate();
    await Promise.all(servers.map((s) => s.close()));
  });
  const start = async (trustProxy: string[]): Promise<TestServer> => {
    const test = await startServer({ trustProxy, maxSessionsPerIp: 1, maxWebsocketsPerIp: 1 });
    servers.push(test);
    return test;
  };

  it('gives each forwarded address its own sessions and WebSockets, and records it on the session', async () => {
    const test = await start(['loopback']);
    const first = await handshakeFrom(test.url, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.1' });
    assert.equal(first.reply.successful, true);
    assert.equal(sessionRecord(test.server, first.reply.clientId as string)?.remoteAddress, '203.0.113.1');
    const again = await handshakeFrom(test.url, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.1' });
    assert.equal(again.reply.successful, false, 'the address has its one session');
    assert.match(String(again.reply.error), /^429::/);
    const other = await handshakeFrom(test.url, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.2' });
    assert.equal(other.reply.successful, true, 'another client of the same proxy is not held back');

    const socket = await socketFrom(test.wsUrl, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.1' });
    assert.ok(socket instanceof WebSocket);
    sockets.push(socket);
    assert.equal(await socketFrom(test.wsUrl, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.1' }), 429);
    const another = await socketFrom(test.wsUrl, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.2' });
    assert.ok(another instanceof WebSocket, 'another address behind the proxy opens its own');
    sockets.push(another);
  });

  it('ignores the header when no proxy is trusted (the default): a client cannot pass for many', async () => {
    const test = await start([]);
    const first = await handshakeFrom(test.url, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.1' });
    assert.equal(first.reply.successful, true);
    assert.equal(sessionRecord(test.server, first.reply.clientId as string)?.remoteAddress, '127.0.0.1');
    const forged = await handshakeFrom(test.url, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.2' });
    assert.equal(forged.reply.successful, false);
    const socket = await socketFrom(test.wsUrl, '127.0.0.1');
    assert.ok(socket instanceof WebSocket);
    sockets.push(socket);
    assert.equal(await socketFrom(test.wsUrl, '127.0.0.1', { 'X-Forwarded-For': '203.0.113.2' }), 429);
  });
});

const NGINX = '/usr/sbin/nginx';

/**
 * nginx in front of `upstream`, as the README's cluster section sets it up, adding X-Forwarded-For
 * (or, with `header` 'x-real-ip', setting X-Real-IP alone, as another common configuration does).
 */
async function startNginx(upstream: string, header: 'x-forwarded-for' | 'x-real-ip' = 'x-forwarded-for'): Promise<{ url: string; stop: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'perihelion-nginx-'));
  const port = await freePort();
  const temp = (name: string): string => `${name}_temp_path ${dir}/${name};`;
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
daemon off;
user root;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  ${['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(temp).join('\n  ')}
  server {
    listen 127.0.0.1:${port};
    location /bayeux {
      proxy_pass ${upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      ${header === 'x-forwarded-for' ? 'proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;' : 'proxy_set_header X-Real-IP $remote_addr;'}
    }
  }
}
`,
  );
  const child: ChildProcess = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += String(chunk)));
  await waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
      // The pid file is written once the listening sockets are open.
      return existsSync(join(dir, 'nginx.pid'));
    },
    5000,
    () => `nginx to listen on ${port}: ${stderr}`,
  );
  return {
    url: `http://127.0.0.1:${port}/bayeux`,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGQUIT');
        await once(child, 'exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Through the proxy at `url`, to a server allowing one session per address: 127.0.0.2 gets one
 * (forging `header` does not make it another client), not a second, and 127.0.0.3 gets its own;
 * the sessions are recorded with the clients' addresses.
 */
async function assertSessionsCountedByClient(server: TestServer['server'], url: string, header: string): Promise<void> {
  const handshakes: string[] = [];
  server.on('handshake', (session) => handshakes.push(session.remoteAddress ?? 'none'));
  assert.equal((await handshakeFrom(url, '127.0.0.2', { [header]: '198.51.100.1' })).reply.successful, true);
  const again = await handshakeFrom(url, '127.0.0.2', { [header]: '198.51.100.2' });
  assert.equal(again.reply.successful, false, 'a second session from 127.0.0.2, past maxSessionsPerIp');
  assert.equal((await handshakeFrom(url, '127.0.0.3')).reply.successful, true, '127.0.0.3 is another client');
  assert.deepEqual(handshakes, ['127.0.0.2', '127.0.0.3']);
}

describe('trustProxy behind a real nginx', { skip: existsSync(NGINX) ? false : `${NGINX} is not installed (apt-get install nginx-light)` }, () => {
  let test: TestServer;
  let nginx: Awaited<ReturnType<typeof startNginx>>;
  const sockets: WebSocket[] = [];
  before(async () => {
    // Only nginx's own address is trusted; the clients come from other loopback addresses.
    test = await startServer({ trustProxy: ['127.0.0.1'], maxSessionsPerIp: 1, maxWebsocketsPerIp: 1 });
    nginx = await startNginx(`http://127.0.0.1:${test.address.port}`);
  });
  after(async () => {
    for (const ws of sockets) ws.terminate();
    await nginx?.stop();
    await test?.close();
  });

  it('counts each client of the proxy by its own address, over HTTP and WebSocket, whatever the client forges', async () => {
    // Clients forging a header of their own: nginx appends the address it saw, which is what counts.
    await assertSessionsCountedByClient(test.server, nginx.url, 'X-Forwarded-For');

    const wsUrl = nginx.url.replace(/^http/, 'ws');
    const socket = await socketFrom(wsUrl, '127.0.0.2');
    assert.ok(socket instanceof WebSocket, 'the upgrade passes the proxy');
    sockets.push(socket);
    assert.equal(await socketFrom(wsUrl, '127.0.0.2'), 429, 'a second WebSocket from 127.0.0.2, past maxWebsocketsPerIp');
    const other = await socketFrom(wsUrl, '127.0.0.3');
    assert.ok(other instanceof WebSocket, '127.0.0.3 opens its own');
    sockets.push(other);
  });

  it('behind an nginx that sets X-Real-IP alone, counts each client by it too, whatever the client forges', async () => {
    const own = await startServer({ trustProxy: ['127.0.0.1'], maxSessionsPerIp: 1 });
    const proxy = await startNginx(`http://127.0.0.1:${own.address.port}`, 'x-real-ip');
    try {
      // nginx replaces the X-Real-IP a client sends with the address it saw.
      await assertSessionsCountedByClient(own.server, proxy.url, 'X-Real-IP');
    } finally {
      await proxy.stop();
      await own.close();
    }
  });
});
