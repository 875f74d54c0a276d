/** `perihelion serve --config`, and a graceful shutdown that loses no acknowledged message. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readConfigFile, resolveSettings, SettingsError } from '../src/index.js';
import { listeningUrl, Poller, start } from './serve-process.js';

const KEY = 'config-test-api-key-0123';
const dir = mkdtempSync(join(tmpdir(), 'perihelion-config-'));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('configuration files', () => {
  it('reads JSON and YAML, with flags and environment winning over the file', () => {
    const yaml = file('a.yaml', 'port: 9100\nmaxQueue: 50\nlogLevel: warn\nchannels:\n  - channel: /chat/**\n    publish: authenticated\n');
    const settings = resolveSettings({ config: yaml }, {});
    assert.equal(settings.port, 9100);
    assert.equal(settings.logLevel, 'warn');
    assert.equal(settings.server.maxQueue, 50);
    assert.deepEqual(settings.server.channels, [{ channel: '/chat/**', publish: 'authenticated' }]);
    assert.equal(resolveSettings({ config: yaml }, { PERIHELION_MAX_QUEUE: '7' }).server.maxQueue, 7);
    assert.equal(resolveSettings({ config: yaml, maxQueue: '9' }, { PERIHELION_MAX_QUEUE: '7' }).server.maxQueue, 9);
    const json = file('b.json', JSON.stringify({ path: '/cometd', demo: false }));
    const fromEnv = resolveSettings({}, { PERIHELION_CONFIG: json });
    assert.equal(fromEnv.server.path, '/cometd');
    assert.equal(fromEnv.demo, false);
  });

  it('names the key and what is allowed when the file is wrong', () => {
    const cases: [string, string, RegExp][] = [
      ['unknown.yaml', 'maxQueu: 5\n', /unknown\.yaml: unknown option "maxQueu"; known options are: .*maxQueue.*, port, host, tlsCert, tlsKey, tlsCa, tlsClientCert, demo, logLevel, redis, redisCluster, redisPartitions, redisPrefix, redisHeartbeatInterval, redisNodeTimeout, redisNodeMessageInlineBytes, workers$/],
      ['type.json', '{"timeout": "30s"}', /type\.json: option "timeout" must be an integer from 0 to 600000, got "30s"/],
      ['port.json', '{"port": "eighty"}', /setting "port" must be a whole number/],
      ['tls.json', '{"tlsCert": 443}', /tls\.json: setting "tlsCert" must be a string/],
      ['mtls.json', '{"tlsClientCert": true}', /mtls\.json: setting "tlsClientCert" must be a string/],
      ['bool.json', '{"open": "yes"}', /option "open" must be true or false/],
      ['list.json', '[1, 2]', /must hold an object of settings/],
      ['broken.json', '{"port": ', /broken\.json is not valid JSON/],
      ['broken.yaml', 'port: [1,\n', /broken\.yaml is not valid YAML/],
      // The option behind --redis is `engine` in the table of options, but a file names the URL.
      ['engine.json', '{"engine": "redis://127.0.0.1:6379"}', /engine\.json: setting "engine" takes an engine object, .*write "redis": "redis:\/\/127\.0\.0\.1:6379", the setting behind --redis/],
      ['code.yaml', 'extensions: []\n', /code\.yaml: setting "extensions" can only be given in code/],
    ];
    for (const [name, text, pattern] of cases) {
      assert.throws(() => readConfigFile(file(name, text)), (error: Error) => error instanceof SettingsError && pattern.test(error.message), name);
    }
    assert.throws(() => readConfigFile(join(dir, 'missing.json')), /cannot read .*ENOENT/);
    assert.throws(() => resolveSettings({ config: file('level.json', '{"logLevel": "loud"}') }, {}), /log level must be one of fatal, error/);
  });

  it('takes the API key from PERIHELION_API_KEY', () => {
    assert.equal(resolveSettings({}, { PERIHELION_API_KEY: KEY }).server.apiKey, KEY);
  });

  it('names a value the server refuses by the flag or variable it was given with', () => {
    const refusals: [Record<string, unknown>, NodeJS.ProcessEnv, RegExp][] = [
      [{}, { PERIHELION_API_KEY: 'short' }, /^PERIHELION_API_KEY must be a string of at least 16 characters$/],
      [{ maxQueue: '0' }, {}, /^--max-queue must be an integer from 1 to 10000000, got 0$/],
      [{}, { PERIHELION_MAX_QUEUE: '0' }, /^PERIHELION_MAX_QUEUE must be an integer from 1 to 10000000, got 0$/],
      [{ trustProxy: 'nonsense' }, { PERIHELION_TRUST_PROXY: 'loopback' }, /^--trust-proxy: "nonsense" is not an address/],
      [{}, { PERIHELION_TRANSPORTS: 'carrier-pigeon' }, /^PERIHELION_TRANSPORTS: unknown connection type "carrier-pigeon"/],
    ];
    for (const [flags, env, pattern] of refusals) {
      assert.throws(() => resolveSettings(flags, env), (error: Error) => error instanceof SettingsError && pattern.test(error.message), `${JSON.stringify(flags)} ${JSON.stringify(env)}`);
    }
  });
});

describe('graceful shutdown', () => {
  it('hands a message acknowledged before SIGTERM to its subscriber, refuses new sessions meanwhile, and exits 0', async () => {
    const child = start(['--drain-timeout', '5000'], { PERIHELION_API_KEY: KEY });
    const exited = once(child, 'exit') as Promise<[number | null]>;
    child.stderr.resume();
    const base = await listeningUrl(child);
    const poller = new Poller(`${base}/bayeux`);
    await poller.join('/news');
    // The backend publishes; the server acknowledges it. The subscriber is between two connects.
    const ack = await fetch(`${base}/api/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: '/news', data: 'acknowledged before shutdown' }),
    });
    assert.equal(ack.status, 200);
    child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 200));
    // Draining: the server is not ready, takes no new session and no new publish...
    const ready = await fetch(`${base}/ready`);
    assert.equal(ready.status, 503);
    assert.deepEqual(await ready.json(), { status: 'shutting down' });
    const newcomer = await new Poller(`${base}/bayeux`).send([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
    assert.equal(newcomer[0]?.successful, false);
    // Without advice, CometD and Faye both try the handshake again (restart.test.ts).
    assert.equal(newcomer[0]?.advice, undefined);
    const late = await fetch(`${base}/api/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: '/news', data: 'too late' }),
    });
    assert.equal(late.status, 503);
    // ...but the subscriber's next connect still collects what was acknowledged, with advice to
    // connect again a second later (CometD refuses "handshake" on a successful reply, see restart.test.ts).
    const collected = await poller.send([{ channel: '/meta/connect', connectionType: 'long-polling' }]);
    const delivered = collected.slice(1) as Array<{ ext?: { position?: { offset: number } } }>;
    assert.equal(delivered[0]?.ext?.position?.offset, 1, 'the first message on /news has offset 1');
    assert.deepEqual(delivered.map(({ ext: _ext, ...rest }) => rest), [{ channel: '/news', data: 'acknowledged before shutdown' }]);
    assert.equal(collected[0]?.successful, true);
    assert.deepEqual(collected[0]?.advice, { reconnect: 'retry', interval: 1000, timeout: 30000 });
    const [code] = await exited;
    assert.equal(code, 0);
  });

  it('answers a held connect at once on SIGTERM and exits quickly when nothing is owed', async () => {
    const child = start([]);
    const exited = once(child, 'exit') as Promise<[number | null]>;
    child.stderr.resume();
    const base = await listeningUrl(child);
    const poller = new Poller(`${base}/bayeux`);
    await poller.join('/quiet');
    const held = poller.send([{ channel: '/meta/connect', connectionType: 'long-polling' }]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const started = Date.now();
    child.kill('SIGTERM');
    const [reply] = await held;
    assert.equal(reply?.successful, true);
    assert.deepEqual(reply?.advice, { reconnect: 'retry', interval: 1000, timeout: 30000 });
    const [code] = await exited;
    assert.equal(code, 0);
    assert.ok(Date.now() - started < 3000, 'no drain wait when no message is owed');
  });

  it('a second signal during the drain ends the process at once, with status 1', async () => {
    const child = start(['--drain-timeout', '20000'], { PERIHELION_API_KEY: KEY });
    const exited = once(child, 'exit') as Promise<[number | null]>;
    child.stderr.resume();
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const base = await listeningUrl(child);
    // A session owed a message keeps the drain waiting for drainTimeout (20 s).
    const poller = new Poller(`${base}/bayeux`);
    await poller.join('/owed');
    const ack = await fetch(`${base}/api/publish`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ channel: '/owed', data: 1 }) });
    assert.equal(ack.status, 200);
    child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    const started = Date.now();
    child.kill('SIGINT');
    const [code] = await exited;
    assert.equal(code, 1);
    assert.ok(Date.now() - started < 2000, `exited ${Date.now() - started} ms after the second signal`);
    assert.match(stdout, /SIGINT again: exiting without finishing the drain/);
  });
});
