/** `perihelion serve` as a user runs it: a child process, real HTTP, real signals. */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@perihelion/client';

const BIN = fileURLToPath(new URL('../src/bin.js', import.meta.url));

/** Servers still running: a test that fails half-way leaves none behind (afterEach). */
const children = new Set<ChildProcessWithoutNullStreams>();

function start(args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  const child = spawn(process.execPath, [BIN, 'serve', ...args], { env: { ...process.env, PORT: '', HOST: '', ...env } });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Reads stdout until the "listening on" line, leaving the stream open so later writes succeed. */
function listeningUrl(child: ChildProcessWithoutNullStreams): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    const onData = (chunk: Buffer): void => {
      output += String(chunk);
      const match = /listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        child.stdout.off('data', onData);
        child.stdout.resume();
        resolve(match[1]!);
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', () => reject(new Error(`server exited before listening: ${output}`)));
  });
}

async function exitOf(child: ChildProcessWithoutNullStreams): Promise<{ code: number | null; stderr: string }> {
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += String(chunk)));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stderr };
}

/** The exit of a command that must refuse to start: one still running after 15 s is stopped (exit code null). */
function refusal(child: ChildProcessWithoutNullStreams): Promise<{ code: number | null; stderr: string }> {
  const stopper = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return exitOf(child).finally(() => clearTimeout(stopper));
}

describe('perihelion serve', () => {
  afterEach(async () => {
    for (const child of [...children]) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
  });

  it('serves Bayeux at the configured path, honours PERIHELION_* settings, and exits 0 on SIGTERM', async () => {
    const child = start(['--port', '0', '--host', '127.0.0.1', '--no-demo'], { PERIHELION_PATH: '/cometd' });
    const exited = exitOf(child);
    const url = await listeningUrl(child);
    const response = await fetch(`${url}/cometd/handshake`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], id: '1' }]),
    });
    const [reply] = (await response.json()) as { successful: boolean; clientId: string }[];
    assert.equal(reply?.successful, true);
    assert.equal((await fetch(`${url}/`)).status, 404, 'the demo page is off with --no-demo');
    child.kill('SIGTERM');
    assert.equal((await exited).code, 0);
  });

  it('turns off a switch that is on by default from the environment or the configuration file, as with its --no- flag', async () => {
    const handshake = async (url: string): Promise<{ successful: boolean; error?: string; ext?: { ack?: unknown } }> => {
      const response = await fetch(`${url}/bayeux`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], ext: { ack: true } }]),
      });
      return ((await response.json()) as { successful: boolean; error?: string; ext?: { ack?: unknown } }[])[0]!;
    };
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-serve-'));
    const config = join(dir, 'perihelion.yaml');
    writeFileSync(config, 'demo: false\nanonymous: false\n');
    const runs: { how: string; args: string[]; env: Record<string, string> }[] = [
      { how: 'the environment', args: [], env: { PERIHELION_DEMO: 'false', PERIHELION_ANONYMOUS: '0', PERIHELION_ACK: 'false' } },
      { how: 'the configuration file', args: ['--config', config, '--no-ack'], env: {} },
      { how: 'the flags', args: ['--no-demo', '--no-anonymous', '--no-ack'], env: {} },
    ];
    try {
      for (const { how, args, env } of runs) {
        const child = start(['--port', '0', '--host', '127.0.0.1', ...args], env);
        const exited = exitOf(child);
        const url = await listeningUrl(child);
        assert.equal((await fetch(`${url}/`)).status, 404, `${how}: no demo page`);
        const reply = await handshake(url);
        assert.equal(reply.successful, false, `${how}: no anonymous sessions`);
        assert.match(reply.error ?? '', /^403::Unauthorized/);
        child.kill('SIGTERM');
        assert.equal((await exited).code, 0);
      }
      // And on by default, whatever commander makes of an absent --no- switch.
      const child = start(['--port', '0', '--host', '127.0.0.1'], { PERIHELION_ACK: '0' });
      const exited = exitOf(child);
      const url = await listeningUrl(child);
      const reply = await handshake(url);
      assert.equal(reply.successful, true, 'anonymous sessions by default');
      assert.equal(reply.ext?.ack, undefined, 'the ack extension off from the environment');
      assert.equal((await fetch(`${url}/`)).status, 200, 'the demo page by default');
      child.kill('SIGTERM');
      assert.equal((await exited).code, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serves the demo page at / by default', async () => {
    const child = start(['--port', '0', '--host', '127.0.0.1']);
    const exited = exitOf(child);
    const url = await listeningUrl(child);
    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /Perihelion/);
    assert.equal((await fetch(`${url}/vendor/cometd/cometd.js`)).status, 200);
    assert.equal((await fetch(`${url}/vendor/cometd/../package.json`)).status, 404);
    child.kill('SIGTERM');
    const { code, stderr } = await exited;
    assert.equal(code, 0, stderr);
  });

  it('answers /service/echo with what the caller sent, to the caller alone (our client and a raw cookie-less one)', async () => {
    const child = start(['--port', '0', '--host', '127.0.0.1']);
    const exited = exitOf(child);
    const url = await listeningUrl(child);
    const client = new Client(`${url}/bayeux`, { transports: ['long-polling'] });
    try {
      assert.deepEqual(await client.request('/service/echo', { ping: [1, 'two'] }), { ping: [1, 'two'] });
      const post = async (message: Record<string, unknown>): Promise<Array<Record<string, unknown>>> => {
        const response = await fetch(`${url}/bayeux`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([message]) });
        return (await response.json()) as Array<Record<string, unknown>>;
      };
      const [handshake] = await post({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] });
      const replies = await post({ channel: '/service/echo', clientId: handshake!.clientId, data: 'hello', id: '7' });
      assert.deepEqual(
        replies.map((reply) => [reply.channel, reply.id, reply.successful, reply.data]),
        [
          ['/service/echo', '7', true, undefined],
          ['/service/echo', '7', true, 'hello'],
        ],
        'the publish reply, then the answer',
      );
    } finally {
      await client.disconnect();
      child.kill('SIGTERM');
    }
    assert.equal((await exited).code, 0);
  });

  it('refuses a bad setting with exit code 2 and a message naming it', async () => {
    const bad = await refusal(start(['--port', '0', '--max-queue', 'lots']));
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--max-queue must be a whole number, got "lots"/);
    const unknownTransport = await refusal(start(['--port', '0'], { PERIHELION_TRANSPORTS: 'carrier-pigeon' }));
    assert.equal(unknownTransport.code, 2);
    assert.match(unknownTransport.stderr, /unknown connection type "carrier-pigeon"/);
    const unknownFlag = await refusal(start(['--port', '0', '--bogus-flag']));
    assert.equal(unknownFlag.code, 2, 'an unknown flag is a usage error too');
    assert.match(unknownFlag.stderr, /unknown option '--bogus-flag'/);
    const shortNames = await refusal(start(['--port', '0', '--max-channel-length', '20']));
    assert.equal(shortNames.code, 2);
    assert.match(shortNames.stderr, /--max-channel-length 20 is too short for the channels this command serves itself .*raise it to 32 or more/);
    const badProxy = await refusal(start(['--port', '0', '--trust-proxy', 'loopback,nginx']));
    assert.equal(badProxy.code, 2);
    assert.match(badProxy.stderr, /--trust-proxy: "nginx" is not an address, a range/);
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-bad-settings-'));
    try {
      const config = join(dir, 'engine.json');
      writeFileSync(config, JSON.stringify({ engine: 'redis://127.0.0.1:6379' }));
      const engineKey = await refusal(start(['--port', '0', '--config', config]));
      assert.equal(engineKey.code, 2, engineKey.stderr);
      assert.match(engineKey.stderr, /^perihelion: .*engine\.json: setting "engine" takes an engine object, .*write "redis": "redis:\/\/127\.0\.0\.1:6379"/);
      assert.doesNotMatch(engineKey.stderr, /TypeError|\n\s+at /);
      const rules = join(dir, 'rules.json');
      writeFileSync(rules, JSON.stringify({ channel: '/chat/**', publish: 'authenticated' }));
      const oneRule = await refusal(start(['--port', '0', '--rules', rules]));
      assert.equal(oneRule.code, 2, oneRule.stderr);
      assert.match(oneRule.stderr, /^perihelion: --rules must be a JSON list of rules/);
      // A token key that could verify nothing stops the server, as a short PERIHELION_JWT_SECRET does.
      const garbage = join(dir, 'garbage.pem');
      writeFileSync(garbage, 'not a key\n');
      const badKey = await refusal(start(['--port', '0', '--jwt-public-key', garbage]));
      assert.equal(badKey.code, 2, badKey.stderr);
      assert.match(badKey.stderr, /^perihelion: --jwt-public-key is not a PEM public key/);
      const publicKey = join(dir, 'public.pem');
      writeFileSync(publicKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }));
      const badAlgorithm = await refusal(start(['--port', '0', '--jwt-public-key', publicKey, '--jwt-algorithm', 'XX256']));
      assert.equal(badAlgorithm.code, 2, badAlgorithm.stderr);
      assert.match(badAlgorithm.stderr, /^perihelion: --jwt-algorithm must be one of RS256, .*, got "XX256"/);
      const wrongKind = await refusal(start(['--port', '0', '--jwt-public-key', publicKey, '--jwt-algorithm', 'ES256']));
      assert.equal(wrongKind.code, 2, wrongKind.stderr);
      assert.match(wrongKind.stderr, /^perihelion: --jwt-public-key is an RSA key, and algorithm ES256 \(--jwt-algorithm\) takes an EC key on P-256/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a --host it cannot listen on (an address not its own, a name that does not resolve) with exit 2 and a line naming --host', async () => {
    // 10.255.255.1 is no address of a test machine; .invalid never resolves (RFC 2606).
    for (const [host, reason] of [
      ['10.255.255.1', /this machine has no such address \(EADDRNOTAVAIL\)/],
      ['no.such.host.invalid', /the name does not resolve to an address \((ENOTFOUND|EAI_AGAIN|EAI_FAIL|EAI_NONAME)\)/],
    ] as const) {
      const refused = await refusal(start(['--port', '0', '--no-demo', '--host', host]));
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, new RegExp(`^perihelion: --host ${host.replace(/\./g, '\\.')}: ${reason.source}`));
      assert.equal(refused.stderr.trim().split('\n').length, 1, `one line, no stack trace: ${refused.stderr}`);
    }
    // From HOST, and with --workers (the primary listens), the same.
    const workers = await refusal(start(['--port', '0', '--no-demo', '--workers', '2'], { HOST: '10.255.255.1' }));
    assert.equal(workers.code, 2, workers.stderr);
    assert.match(workers.stderr, /^perihelion: --host 10\.255\.255\.1: this machine has no such address/);
  });

  it('says how to listen on a port below 1024 it may not take (443 for HTTPS), in one line, with exit 1', async (t) => {
    // Containers often let every user take low ports (net.ipv4.ip_unprivileged_port_start = 0).
    const lowest = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
    if (lowest <= 443) return t.skip(`any user may listen on 443 here (ip_unprivileged_port_start ${lowest})`);
    // As a user's process: here, where tests run as root, as the user nobody.
    const asUser = (args: string[]): ChildProcessWithoutNullStreams => {
      const command = process.getuid?.() === 0 ? ['runuser', ['-u', 'nobody', '--', process.execPath, BIN, 'serve', ...args]] as const : [process.execPath, [BIN, 'serve', ...args]] as const;
      const child = spawn(command[0], [...command[1]], { env: { ...process.env, PORT: '', HOST: '' }, cwd: tmpdir() });
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    };
    for (const args of [['--port', '443', '--no-demo'], ['--port', '443', '--no-demo', '--workers', '2']]) {
      const refused = await refusal(asUser(args));
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /^perihelion: not allowed to listen there \(listen EACCES: permission denied .*:443\): a port below 1024 needs privileges; choose a port of 1024 or more .*cap_net_bind_service/);
      assert.equal(refused.stderr.trim().split('\n').length, 1, `one line, no stack trace: ${refused.stderr}`);
    }
  });

  it('warns at start-up in open mode and states the security settings otherwise', async () => {
    const lines = async (args: string[], env: Record<string, string> = {}): Promise<string> => {
      const child = start(['--port', '0', '--host', '127.0.0.1', '--no-demo', ...args], env);
      let output = '';
      child.stdout.on('data', (chunk) => (output += String(chunk)));
      const exited = exitOf(child);
      await listeningUrl(child);
      await waitForOutput(() => output, /session binding|WARNING/);
      child.kill('SIGTERM');
      await exited;
      return output;
    };
    assert.match(await lines(['--open']), /WARNING: open mode/);
    assert.match(await lines([], { PERIHELION_OPEN: '1' }), /WARNING: open mode/);
    const secure = await lines(['--no-anonymous'], { PERIHELION_JWT_SECRET: 'k'.repeat(32) });
    assert.match(secure, /anonymous access: off/);
    assert.match(secure, /authentication: signed tokens/);
    assert.doesNotMatch(secure, /WARNING/);
    // The rules counted are the user's, not the command's own for its services.
    assert.match(secure, /publish only where a rule allows \(no rules of yours, besides this command's own for its services\)/);
  });
});

async function waitForOutput(read: () => string, pattern: RegExp): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!pattern.test(read())) {
    if (Date.now() > deadline) throw new Error(`no ${pattern} in: ${read()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
