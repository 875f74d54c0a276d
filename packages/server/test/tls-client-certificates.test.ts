/**
 * Client certificates on the server's own TLS listener (`tls.clientCertificates`, `tls.ca`), with
 * a certificate authority and certificates made by openssl for the test: `require` refuses a
 * client without a certificate the authority signed in the TLS handshake, `request` lets it in
 * anonymous; a verified certificate reaches the authenticator over WSS and HTTPS alike; options
 * that cannot work are refused saying why; the authority can be replaced while the server runs.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { authenticateByCertificate, createServer, PerihelionError, type ClientCertificate, type Perihelion, type TlsOptions } from '../src/index.js';

interface Made {
  cert: string;
  key: string;
}

let dir: string;
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore', cwd: dir });
const read = (name: string): Made => ({ cert: readFileSync(join(dir, `${name}.crt`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8') });

/** A self-signed certificate: an authority, a server's for localhost, or a client's nobody signed. */
function selfSigned(name: string, subject: string, server = false): Made {
  openssl('req', '-x509', ...EC, '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', subject, ...(server ? ['-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'] : []));
  return read(name);
}

/** A client certificate signed by the authority `ca`. */
function signed(name: string, subject: string, ca: string): Made {
  openssl('req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2');
  return read(name);
}

let authority: Made;
let otherAuthority: Made;
let serverCert: Made;
let device: Made;
let rogue: Made;
let laterDevice: Made;
let nameless: Made;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'perihelion-mtls-'));
  authority = selfSigned('ca', '/CN=Test Devices CA');
  otherAuthority = selfSigned('ca2', '/CN=Another CA');
  serverCert = selfSigned('server', '/CN=localhost', true);
  device = signed('device', '/O=Acme/CN=device-17', 'ca');
  laterDevice = signed('later', '/CN=device-18', 'ca2');
  rogue = selfSigned('rogue', '/CN=device-17');
  nameless = signed('nameless', '/O=Acme/OU=Sensors', 'ca');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const servers: Perihelion[] = [];
after(async () => Promise.all(servers.map((server) => server.close())));

/** A server whose authenticator takes the user from the client certificate's CN, and notes what it was shown. */
async function mtlsServer(tls: Partial<TlsOptions>): Promise<{ server: Perihelion; port: number; seen: Array<ClientCertificate | undefined> }> {
  const seen: Array<ClientCertificate | undefined> = [];
  const server = createServer({
    open: true,
    handshakeRate: 0,
    pingInterval: 0,
    drainTimeout: 0,
    authenticate: ({ request: facts }) => {
      seen.push(facts.clientCertificate);
      return facts.clientCertificate?.commonName !== undefined ? { id: facts.clientCertificate.commonName, roles: [], claims: {} } : null;
    },
  });
  servers.push(server);
  const { port } = await server.listen({ port: 0, host: '127.0.0.1', tls: { ...serverCert, ...tls } });
  return { server, port, seen };
}

/** A WSS handshake presenting `client` (or no certificate): the handshake reply, or the error that ended the connection. */
async function wssHandshake(port: number, client?: Made): Promise<Record<string, unknown> | Error> {
  const ws = new WebSocket(`wss://localhost:${port}/bayeux`, { ca: serverCert.cert, ...(client ? { cert: client.cert, key: client.key } : {}) });
  try {
    const failed = await new Promise<Error | null>((resolve) => {
      ws.once('open', () => resolve(null));
      ws.once('error', resolve);
      ws.once('close', () => resolve(new Error('closed before it opened')));
    });
    if (failed !== null) return failed;
    ws.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]));
    const [raw] = (await once(ws, 'message')) as [Buffer];
    return (JSON.parse(String(raw)) as Array<Record<string, unknown>>)[0]!;
  } finally {
    ws.terminate();
  }
}

/** A long-polling handshake over HTTPS presenting `client`: its reply, or the error. */
function httpsHandshake(port: number, client?: Made): Promise<Record<string, unknown> | Error> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/bayeux', method: 'POST', ca: serverCert.cert, servername: 'localhost', headers: { 'Content-Type': 'application/json' }, ...(client ? { cert: client.cert, key: client.key } : {}) },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve((JSON.parse(text) as Array<Record<string, unknown>>)[0]!));
      },
    );
    req.on('error', resolve);
    req.end(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]));
  });
}

const refusedInTls = (outcome: Record<string, unknown> | Error): boolean => outcome instanceof Error;
const userOf = async (server: Perihelion, reply: Record<string, unknown> | Error): Promise<string | null | undefined> => {
  if (reply instanceof Error) return undefined;
  assert.equal(reply.successful, true, JSON.stringify(reply));
  return server.getSession(reply.clientId as string)?.identity?.id ?? null;
};

describe('TLS client certificates', () => {
  it('require: a certificate the authority signed gets in, and the authenticator sees it over WSS and HTTPS; none, or one nobody signed, is refused in the TLS handshake', async () => {
    const { server, port, seen } = await mtlsServer({ ca: authority.cert, clientCertificates: 'require' });
    assert.equal(await userOf(server, await wssHandshake(port, device)), 'device-17');
    assert.equal(await userOf(server, await httpsHandshake(port, device)), 'device-17');
    const shown = seen[0]!;
    assert.equal(shown.commonName, 'device-17');
    assert.match(shown.subject, /^O=Acme$/m);
    assert.match(shown.issuer, /CN=Test Devices CA/);
    assert.match(shown.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.ok(refusedInTls(await wssHandshake(port)), 'no certificate');
    assert.ok(refusedInTls(await wssHandshake(port, rogue)), 'a certificate nobody signed, with the same name');
    assert.ok(refusedInTls(await httpsHandshake(port)), 'no certificate, over HTTPS');
    assert.equal(seen.length, 2, 'the refused never reached the authenticator');
  });

  it('request: a client without a certificate gets in anonymous, one with a signed certificate as its user; an unsigned one is not taken for anyone', async () => {
    const { server, port } = await mtlsServer({ ca: authority.cert, clientCertificates: 'request' });
    assert.equal(await userOf(server, await wssHandshake(port)), null);
    assert.equal(await userOf(server, await wssHandshake(port, device)), 'device-17');
    assert.equal(await userOf(server, await wssHandshake(port, rogue)), null, 'its CN says device-17, but nobody vouches for it');
    assert.equal(await userOf(server, await httpsHandshake(port, device)), 'device-17');
  });

  it('authenticateByCertificate: the CN is the user, with the fingerprint as a claim; a signed certificate that names nobody is refused, and others still served', async () => {
    const server = createServer({ open: true, handshakeRate: 0, pingInterval: 0, drainTimeout: 0, authenticate: authenticateByCertificate });
    servers.push(server);
    const { port } = await server.listen({ port: 0, host: '127.0.0.1', tls: { ...serverCert, ca: authority.cert, clientCertificates: 'require' } });
    const refusal = await wssHandshake(port, nameless);
    assert.ok(!(refusal instanceof Error), String(refusal));
    assert.equal(refusal.successful, false);
    assert.match(String(refusal.error), /the client certificate names nobody \(its subject has no CN\)/);
    const reply = await wssHandshake(port, device);
    assert.ok(!(reply instanceof Error) && reply.successful === true, JSON.stringify(reply));
    const identity = server.getSession(reply.clientId as string)!.identity!;
    assert.equal(identity.id, 'device-17');
    assert.deepEqual(identity.roles, []);
    assert.match(String(identity.claims['certificate']), /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.match(String(identity.claims['subject']), /CN=device-17/);
  });

  it('refuses options that cannot work, saying why, before it listens', async () => {
    const cases: Array<[Partial<TlsOptions>, RegExp]> = [
      [{ clientCertificates: 'require' }, /clientCertificates needs ca/],
      [{ ca: authority.cert, clientCertificates: 'always' as 'require' }, /clientCertificates is "request" or "require", got "always"/],
      [{ ca: 'not a certificate', clientCertificates: 'require' }, /ca holds no PEM certificate/],
      [{ ca: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----', clientCertificates: 'require' }, /ca: certificate 1 of 1 cannot be read/],
      [{ ca: 42 as unknown as string }, /ca must be PEM text of certificates/],
    ];
    for (const [tls, expected] of cases) {
      const server = createServer({ open: true });
      servers.push(server);
      await assert.rejects(server.listen({ port: 0, host: '127.0.0.1', tls: { ...serverCert, ...tls } }), (error: PerihelionError) => {
        assert.equal(error.code, 'ERR_INVALID_OPTION');
        assert.match(error.message, expected);
        return true;
      });
      assert.equal(server.address(), null, 'nothing listens');
    }
  });

  it('takes a new authority while it runs (reloadTls), not a change of clientCertificates', async () => {
    const { server, port } = await mtlsServer({ ca: authority.cert, clientCertificates: 'require' });
    assert.ok(refusedInTls(await wssHandshake(port, laterDevice)), 'signed by an authority not trusted yet');
    server.reloadTls({ ...serverCert, ca: authority.cert + otherAuthority.cert, clientCertificates: 'require' });
    assert.equal(await userOf(server, await wssHandshake(port, laterDevice)), 'device-18');
    assert.equal(await userOf(server, await wssHandshake(port, device)), 'device-17', 'both authorities now');
    assert.throws(
      () => server.reloadTls({ ...serverCert, ca: authority.cert, clientCertificates: 'request' }),
      (error: PerihelionError) => error.code === 'ERR_INVALID_OPTION' && /cannot change while it runs/.test(error.message),
    );
    assert.throws(() => server.reloadTls(serverCert), /cannot change while it runs/, 'dropping them is a change too');
    assert.ok(refusedInTls(await wssHandshake(port)), 'still required');
  });
});
