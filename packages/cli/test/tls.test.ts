/**
 * `perihelion serve --tls-cert --tls-key`, as users run it: HTTPS and WSS for CometD, Faye and the
 * Perihelion client in their plain setup (in a process that trusts the test's certificate, as a
 * machine trusts its authority), in one process and under `--workers 2`; a renewed certificate
 * taken on SIGHUP without a restart; the demo page over HTTPS in Chromium; settings that cannot
 * serve refused at once with the reason.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createHash, X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request as httpsRequest } from 'node:https';
import { connect as connectTls } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { launchChromium } from './browser-kit.js';
import { BIN, listeningUrl, start } from './serve-process.js';
import { serve } from '../src/index.js';

const CLIENTS = fileURLToPath(new URL('./tls-clients.js', import.meta.url));

let dir: string;
/** A self-signed certificate for localhost and 127.0.0.1, valid for 30 days: its files. */
function certificate(name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '30', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert, key };
}

let first: { cert: string; key: string };
let second: { cert: string; key: string };
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'perihelion-cli-tls-'));
  first = certificate('first');
  second = certificate('second');
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** The common name of the certificate a new TLS connection to `port` is served (trusting either). */
async function servedName(port: number): Promise<string> {
  const socket = connectTls({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false });
  await once(socket, 'secureConnect');
  const name = String(socket.getPeerCertificate().subject.CN);
  socket.destroy();
  return name;
}

async function waitFor(what: () => string, predicate: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stop(child: ReturnType<typeof start>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await once(child, 'exit');
}

/** `perihelion` with `args` to its end: exit code and what it wrote. */
async function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, PORT: '', HOST: '', ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += String(chunk)));
  child.stderr.on('data', (chunk: Buffer) => (stderr += String(chunk)));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

describe('perihelion serve over TLS', () => {
  for (const workers of [[], ['--workers', '2']]) {
    const how = workers.length > 0 ? 'under --workers 2' : 'in one process';
    it(`serves HTTPS and WSS to CometD, Faye and the Perihelion client in their plain setup, over long-polling and WebSocket (${how})`, { timeout: 60_000 }, async () => {
      const child = start(['--open', '--tls-cert', first.cert, '--tls-key', first.key, ...workers]);
      child.stderr.resume();
      try {
        const base = await listeningUrl(child);
        assert.match(base, /^https:\/\//);
        const clients = spawn(process.execPath, [CLIENTS, `${base}/bayeux`, '/tls/plain'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: first.cert } });
        let output = '';
        let errors = '';
        clients.stdout.on('data', (chunk: Buffer) => (output += String(chunk)));
        clients.stderr.on('data', (chunk: Buffer) => (errors += String(chunk)));
        const [code] = (await once(clients, 'exit')) as [number | null];
        assert.equal(code, 0, errors);
        const received = JSON.parse(output) as Record<string, unknown[]>;
        assert.deepEqual(Object.keys(received).sort(), ['CometD long-polling', 'CometD websocket', 'Faye long-polling', 'Faye websocket', 'Perihelion long-polling', 'Perihelion websocket']);
        for (const [name, data] of Object.entries(received)) assert.deepEqual(data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], `${name}: every message once, in order`);
      } finally {
        await stop(child);
      }
    });

    it(`takes a renewed certificate on SIGHUP, without a restart; one that cannot serve is refused and the one in use stays (${how})`, { timeout: 60_000 }, async () => {
      const cert = join(dir, `live${workers.length}.crt`);
      const key = join(dir, `live${workers.length}.key`);
      copyFileSync(first.cert, cert);
      copyFileSync(first.key, key);
      const child = start(['--tls-cert', cert, '--tls-key', key, ...workers]);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += String(chunk)));
      child.stderr.on('data', (chunk: Buffer) => (stderr += String(chunk)));
      try {
        const port = Number(new URL(await listeningUrl(child)).port);
        if (workers.length > 0) await waitFor(() => `both workers ready (${stdout})`, () => (stdout.match(/takes connections/g) ?? []).length === 2);
        assert.equal(await servedName(port), 'first');
        copyFileSync(second.cert, cert);
        copyFileSync(second.key, key);
        child.kill('SIGHUP');
        // Every connection from now on, whichever worker takes it.
        await waitFor(() => `the renewed certificate (${stdout} ${stderr})`, async () => (await Promise.all(Array.from({ length: 6 }, () => servedName(port)))).every((name) => name === 'second'));
        assert.match(stdout, /TLS: reloaded, certificate for DNS:localhost/);
        copyFileSync(first.key, key);
        child.kill('SIGHUP');
        await waitFor(() => `the refusal (${stderr})`, () => /TLS not reloaded, the certificate in use stays: .*the key is not the certificate's/.test(stderr));
        for (let n = 0; n < 6; n++) assert.equal(await servedName(port), 'second');
        assert.equal(child.exitCode, null, 'still serving');
      } finally {
        await stop(child);
      }
    });
  }

  it('serves the demo page over HTTPS, whose client connects over WSS (Chromium)', { timeout: 60_000 }, async () => {
    const running = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true, tls: first }, () => {});
    // The browser trusts the test's certificate (by its public key), in the page and in the
    // SharedWorker that holds the connection alike, as it would one of an authority it trusts.
    const spki = createHash('sha256').update(new X509Certificate(readFileSync(first.cert)).publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
    const browser = await launchChromium([`--ignore-certificate-errors-spki-list=${spki}`]);
    try {
      assert.match(running.url, /^https:\/\//);
      const context = await browser.newContext();
      const page = await context.newPage();
      await page.goto(`${running.url}/`);
      await page.waitForSelector('#conn-state:text-is("connected")', { timeout: 10_000 });
      assert.match((await page.textContent('#transport')) ?? '', /websocket/);
      await page.waitForFunction(() => /PERI \d+\.\d\d/.test(document.getElementById('live-quote')?.textContent ?? ''), undefined, { timeout: 5000 });
    } finally {
      await browser.close();
      await running.stop();
    }
  });

  it('perihelion subscribe and publish reach it from a machine that trusts its certificate (NODE_EXTRA_CA_CERTS), and say how when it does not', { timeout: 60_000 }, async () => {
    const key = 'a-key-of-more-than-sixteen-characters';
    const child = start(['--tls-cert', first.cert, '--tls-key', first.key], { PERIHELION_API_KEY: key });
    child.stderr.resume();
    try {
      const url = await listeningUrl(child);
      for (const { code, stderr } of [await run(['subscribe', '/tls/cli', '--url', url, '--count', '1']), await run(['publish', '/tls/cli', '1', '--url', url], { PERIHELION_API_KEY: key })]) {
        assert.equal(code, 1, stderr);
        assert.match(stderr, /certificate is not trusted here \(self-signed certificate\); if an authority of your own signed it, trust that authority with NODE_EXTRA_CA_CERTS=<its PEM file>/);
      }
      const trusted = { NODE_EXTRA_CA_CERTS: first.cert };
      const subscriber = spawn(process.execPath, [BIN, 'subscribe', '/tls/cli', '--url', url, '--count', '1'], { env: { ...process.env, ...trusted } });
      let printed = '';
      subscriber.stdout.on('data', (chunk: Buffer) => (printed += String(chunk)));
      // Published until the subscriber, once subscribed, has printed one and exited.
      for (let n = 1; subscriber.exitCode === null && n <= 50; n++) {
        const published = await run(['publish', '/tls/cli', String(n), '--url', url], { ...trusted, PERIHELION_API_KEY: key });
        assert.equal(published.code, 0, published.stderr);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      await waitFor(() => `the subscriber's exit (${printed})`, () => subscriber.exitCode !== null);
      assert.equal(subscriber.exitCode, 0);
      assert.match(printed, /^\{"channel":"\/tls\/cli","data":\d+\}\n$/);
    } finally {
      await stop(child);
    }
  });

  for (const workers of [[], ['--workers', '2']]) {
    const how = workers.length > 0 ? 'under --workers 2' : 'in one process';
    it(`serves only clients whose certificate --tls-ca signed (--tls-client-cert require), each as the user its CN names (${how})`, { timeout: 60_000 }, async () => {
      const authority = join(dir, 'devices-ca');
      const device = join(dir, 'device-17');
      const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
      const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      openssl('req', '-x509', ...EC, '-keyout', `${authority}.key`, '-out', `${authority}.crt`, '-days', '2', '-subj', '/CN=Devices CA');
      openssl('req', ...EC, '-keyout', `${device}.key`, '-out', `${device}.csr`, '-subj', '/CN=device-17');
      openssl('x509', '-req', '-in', `${device}.csr`, '-CA', `${authority}.crt`, '-CAkey', `${authority}.key`, '-CAcreateserial', '-out', `${device}.crt`, '-days', '2');
      const apiKey = 'client-certificates-api-key-0123';
      const child = start(['--tls-cert', first.cert, '--tls-key', first.key, '--tls-ca', `${authority}.crt`, '--tls-client-cert', 'require', ...workers], { PERIHELION_API_KEY: apiKey });
      let stdout = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += String(chunk)));
      child.stderr.resume();
      const sockets: WebSocket[] = [];
      try {
        const base = await listeningUrl(child);
        if (workers.length > 0) await waitFor(() => `both workers ready (${stdout})`, () => (stdout.match(/takes connections/g) ?? []).length === 2);
        await waitFor(() => `the summary's line on client certificates (${stdout})`, () => /TLS: client certificates required \(a client without one is refused\), signed by CN=Devices CA; a certificate's CN is its user/.test(stdout));
        await waitFor(() => `the summary's line on authentication (${stdout})`, () => /authentication: client certificates \(a certificate's CN is its user\)/.test(stdout));
        const ca = readFileSync(first.cert, 'utf8');
        const open = (withCertificate: boolean): Promise<WebSocket | Error> =>
          new Promise((resolve) => {
            const ws = new WebSocket(`${base.replace('https', 'wss')}/bayeux`, { ca, ...(withCertificate ? { cert: readFileSync(`${device}.crt`), key: readFileSync(`${device}.key`) } : {}) });
            sockets.push(ws);
            ws.once('open', () => resolve(ws));
            ws.once('error', resolve);
          });
        assert.ok((await open(false)) instanceof Error, 'no certificate: refused');
        const ws = await open(true);
        assert.ok(ws instanceof WebSocket, String(ws));
        const received: Array<Record<string, unknown>> = [];
        ws.on('message', (raw) => received.push(...(JSON.parse(String(raw)) as Array<Record<string, unknown>>)));
        ws.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]));
        await waitFor(() => 'the handshake', () => received.some((m) => m.channel === '/meta/handshake'));
        const clientId = received.find((m) => m.channel === '/meta/handshake')!.clientId as string;
        ws.send(JSON.stringify([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]));
        // Delivered to the user the certificate names, wherever its session is (the API, on the
        // same listener, wants a certificate too).
        const delivered = await new Promise<unknown>((resolve, reject) => {
          const req = httpsRequest(
            `${base}/api/deliver`,
            { method: 'POST', ca, servername: 'localhost', cert: readFileSync(`${device}.crt`), key: readFileSync(`${device}.key`), headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' } },
            (res) => {
              let text = '';
              res.on('data', (chunk: Buffer) => (text += String(chunk)));
              res.on('end', () => resolve(JSON.parse(text)));
            },
          );
          req.on('error', reject);
          req.end(JSON.stringify({ user: 'device-17', channel: '/devices/commands', data: 'reboot' }));
        });
        assert.deepEqual(delivered, { delivered: 1 });
        await waitFor(() => `the delivery (${JSON.stringify(received)})`, () => received.some((m) => m.channel === '/devices/commands' && m.data === 'reboot'));
      } finally {
        for (const socket of sockets) socket.terminate();
        await stop(child);
      }
    });
  }

  it('refuses TLS settings that cannot serve, at once, with the reason (exit code 2)', { timeout: 30_000 }, async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--tls-cert', first.cert], /--tls-cert needs --tls-key/],
      [['--tls-key', first.key], /--tls-key needs --tls-cert/],
      [['--tls-cert', join(dir, 'missing.crt'), '--tls-key', first.key], /--tls-cert: cannot read ".*missing\.crt" \(ENOENT\)/],
      [['--tls-cert', first.cert, '--tls-key', second.key], /--tls-cert .*first\.crt with --tls-key .*second\.key: the certificate and key cannot serve: the key is not the certificate's/],
      [['--tls-cert', first.key, '--tls-key', first.key], /not PEM of a certificate and its private key/],
      [['--tls-client-cert', 'require', '--tls-ca', first.cert], /--tls-client-cert needs --tls-cert and --tls-key/],
      [['--tls-cert', first.cert, '--tls-key', first.key, '--tls-client-cert', 'require'], /--tls-client-cert require needs --tls-ca/],
      [['--tls-cert', first.cert, '--tls-key', first.key, '--tls-ca', first.cert], /--tls-ca is the authority of client certificates: give --tls-client-cert require/],
      [['--tls-cert', first.cert, '--tls-key', first.key, '--tls-ca', first.cert, '--tls-client-cert', 'always'], /--tls-client-cert is "require" or "request", got "always"/],
      [['--tls-cert', first.cert, '--tls-key', first.key, '--tls-ca', first.key, '--tls-client-cert', 'require'], /--tls-ca .*first\.key: ca holds no PEM certificate/],
    ];
    for (const [args, expected] of cases) {
      const { code, stderr } = await run(['serve', '--port', '0', '--no-demo', ...args]);
      assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
      assert.match(stderr, expected);
    }
    // Under --workers, the primary says it once, before forking.
    const { code, stderr } = await run(['serve', '--port', '0', '--no-demo', '--workers', '2', '--tls-cert', first.cert, '--tls-key', second.key]);
    assert.equal(code, 2);
    assert.equal(stderr.match(/the key is not the certificate's/g)?.length, 1, stderr);
  });
});
