/**
 * `perihelion publish` and `perihelion subscribe` as a user runs them: child processes against a
 * server running in this process, over real HTTP and WebSocket, with real signals.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import type { ServerOptions } from '@perihelion/server';
import { serve, type Running } from '../src/index.js';

const BIN = fileURLToPath(new URL('../src/bin.js', import.meta.url));
const KEY = 'publish-subscribe-test-api-key';
const JWT_SECRET = 's'.repeat(32);

const servers = new Set<Running>();
const children = new Set<Cli>();

/** A server in this process; the default security policy: clients subscribe, only the API publishes. */
async function start(options: ServerOptions = {}, port = 0): Promise<Running> {
  const running = await serve({ server: { apiKey: KEY, pingInterval: 0, ...options }, port, host: '127.0.0.1', demo: false }, () => {});
  servers.add(running);
  return running;
}

/** Waits until the server has a subscriber on `channel`. */
async function subscribed(running: Running, channel: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await running.server.engine.subscriberCount(channel)) === 0) {
    if (Date.now() > deadline) throw new Error(`no subscriber on ${channel}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function stop(running: Running): Promise<void> {
  servers.delete(running);
  await running.stop();
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const probe = createTcpServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** The CLI as a child process, with none of this environment's PERIHELION_* settings. */
class Cli {
  stdout = '';
  stderr = '';
  readonly child: ChildProcessWithoutNullStreams;
  readonly done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], env: Record<string, string> = {}, input = '') {
    const clean: NodeJS.ProcessEnv = {};
    for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('PERIHELION_')) clean[name] = value;
    this.child = spawn(process.execPath, [BIN, ...args], { env: { ...clean, ...env } });
    children.add(this);
    this.child.stdout.on('data', (chunk) => (this.stdout += String(chunk)));
    this.child.stderr.on('data', (chunk) => (this.stderr += String(chunk)));
    this.child.stdout.on('error', () => {});
    this.child.stdin.end(input);
    this.done = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        children.delete(this);
        resolve({ code, signal });
      });
    });
  }

  get lines(): string[] {
    return this.stdout.split('\n').filter((line) => line !== '');
  }

  /** Waits until `pattern` has shown `times` times on the stream; fails early if the process ends. */
  async waitFor(stream: 'stdout' | 'stderr', pattern: RegExp, times = 1, ms = 15_000): Promise<void> {
    const global = new RegExp(pattern.source, `${pattern.flags.replace('g', '')}g`);
    const deadline = Date.now() + ms;
    let ended = false;
    void this.done.then(() => (ended = true));
    while ((this[stream].match(global) ?? []).length < times) {
      if (ended || Date.now() > deadline) {
        throw new Error(`${ended ? 'exited' : 'timed out'} waiting for ${pattern} ×${times} on ${stream}\nstdout: ${this.stdout}\nstderr: ${this.stderr}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/** Runs the CLI to its end. */
async function run(args: string[], env: Record<string, string> = {}, input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = new Cli(args, env, input);
  const { code } = await cli.done;
  return { code, stdout: cli.stdout, stderr: cli.stderr };
}

function publish(url: string, channel: string, json: string, ...extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(['publish', channel, json, '--url', url, ...extra], { PERIHELION_API_KEY: KEY });
}

function subscriber(url: string, pattern: string, ...extra: string[]): Cli {
  return new Cli(['subscribe', pattern, '--url', url, '--verbose', ...extra]);
}

async function api(url: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  assert.equal(response.status, 200, `${method} ${path}`);
  return (await response.json()) as Record<string, unknown>;
}

async function presence(url: string, channel: string): Promise<{ clientId: string; user: string | null }[]> {
  const { sessions } = await api(url, 'GET', `/api/presence?channel=${encodeURIComponent(channel)}`);
  return sessions as { clientId: string; user: string | null }[];
}

function hs256(claims: Record<string, unknown>, secret: string): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

function line(channel: string, data: unknown): string {
  return `${JSON.stringify({ channel, data })}\n`;
}

describe('perihelion publish and subscribe', () => {
  let server: Running;

  before(async () => {
    server = await start();
  });

  afterEach(async () => {
    // A test that failed half-way leaves its children: none outlives its test.
    for (const cli of [...children]) {
      cli.child.kill('SIGKILL');
      await cli.done;
    }
  });

  after(async () => {
    await Promise.all([...servers].map((running) => stop(running)));
  });

  it('prints each message that `perihelion publish` sends as one line of JSON, and exits 0 after --count', async () => {
    const extensions: unknown[] = [];
    const unlisten = server.server.subscribe('/news/today', (message) => void extensions.push(message.ext));
    const sub = subscriber(server.url, '/news/today', '--count', '2');
    await sub.waitFor('stderr', /subscribed to \/news\/today/);
    assert.deepEqual(await publish(server.url, '/news/today', '{"headline":"one"}'), { code: 0, stdout: '', stderr: '' }, 'success prints nothing');
    const verbose = await publish(server.url, '/news/today', '{"headline":"two"}', '--ext', '{"source":"cli"}', '--verbose');
    assert.equal(verbose.code, 0, verbose.stderr);
    assert.equal(verbose.stdout, '');
    assert.match(verbose.stderr, /published to \/news\/today .*"published":1/);
    const { code } = await sub.done;
    assert.equal(code, 0, sub.stderr);
    assert.equal(sub.stdout, line('/news/today', { headline: 'one' }) + line('/news/today', { headline: 'two' }));
    const { position, ...ext } = extensions[1] as { position?: { offset: number } };
    assert.deepEqual(ext, { source: 'cli' }, '--ext travels with the message');
    assert.equal(position?.offset, 2, 'the server adds the position');
    assert.match(sub.stderr, /disconnecting/, 'the session ends with /meta/disconnect');
    unlisten();
  });

  it('subscribes to wildcard patterns: /* one level below, /** any depth', async () => {
    const deep = subscriber(server.url, '/feed/**', '--count', '3');
    const shallow = subscriber(server.url, '/feed/*', '--count', '2');
    await deep.waitFor('stderr', /subscribed to \/feed\/\*\*/);
    await shallow.waitFor('stderr', /subscribed to \/feed\/\*/);
    for (const [channel, data] of [['/other/x', 0], ['/feed/b/c', 1], ['/feed/a', 2], ['/feed/d', 3]] as const) {
      assert.equal((await publish(server.url, channel, JSON.stringify(data))).code, 0);
    }
    assert.equal((await deep.done).code, 0, deep.stderr);
    assert.equal((await shallow.done).code, 0, shallow.stderr);
    assert.equal(deep.stdout, line('/feed/b/c', 1) + line('/feed/a', 2) + line('/feed/d', 3));
    assert.equal(shallow.stdout, line('/feed/a', 2) + line('/feed/d', 3));
  });

  it('resumes a pattern where an earlier run stopped: --since <channel>=<position> for each of its channels', async () => {
    const first = subscriber(server.url, '/stock/*', '--positions', '--count', '2');
    await first.waitFor('stderr', /subscribed to \/stock\/\*/);
    for (const channel of ['/stock/eu', '/stock/us']) assert.equal((await publish(server.url, channel, '1')).code, 0);
    assert.equal((await first.done).code, 0, first.stderr);
    const last = new Map(first.stdout.trim().split('\n').map((text) => JSON.parse(text) as { channel: string; position: string }).map((m) => [m.channel, m.position]));
    assert.deepEqual([...last.keys()].sort(), ['/stock/eu', '/stock/us']);
    // Published while no subscriber runs.
    for (const channel of ['/stock/eu', '/stock/us']) assert.equal((await publish(server.url, channel, '2')).code, 0);
    const second = subscriber(server.url, '/stock/*', '--since', `/stock/eu=${last.get('/stock/eu')}`, '--since', `/stock/us=${last.get('/stock/us')}`, '--count', '3');
    await second.waitFor('stderr', /subscribed to \/stock\/\*/);
    assert.equal((await publish(server.url, '/stock/eu', '3')).code, 0);
    assert.equal((await second.done).code, 0, second.stderr);
    const lines = second.stdout.trim().split('\n');
    assert.deepEqual(lines.slice(0, 2).sort(), [line('/stock/eu', 2), line('/stock/us', 2)].map((l) => l.trim()), 'what each channel missed, first');
    assert.equal(`${lines[2]}\n`, line('/stock/eu', 3), 'then the live message');
  });

  it('resumes where an earlier run stopped: --positions prints each position, --since starts after one', async () => {
    const first = subscriber(server.url, '/orders/eu', '--positions', '--count', '1');
    await first.waitFor('stderr', /subscribed to \/orders\/eu/);
    assert.equal((await publish(server.url, '/orders/eu', '1')).code, 0);
    assert.equal((await first.done).code, 0, first.stderr);
    const printed = JSON.parse(first.stdout) as { channel: string; data: unknown; position: string };
    assert.deepEqual({ ...printed, position: undefined }, { channel: '/orders/eu', data: 1, position: undefined });
    assert.match(printed.position, /^[^:]+:1$/);
    // Published while no subscriber runs.
    for (const n of [2, 3]) assert.equal((await publish(server.url, '/orders/eu', String(n))).code, 0);
    const second = subscriber(server.url, '/orders/eu', '--since', printed.position, '--count', '3');
    await second.waitFor('stderr', /subscribed to \/orders\/eu/);
    assert.equal((await publish(server.url, '/orders/eu', '4')).code, 0);
    assert.equal((await second.done).code, 0, second.stderr);
    assert.equal(second.stdout, line('/orders/eu', 2) + line('/orders/eu', 3) + line('/orders/eu', 4));
    assert.doesNotMatch(second.stderr, /may have been lost/);
    // A position the history no longer holds: said on stderr, and live messages still come.
    const stale = subscriber(server.url, '/orders/eu', '--since', `${printed.position.split(':')[0]}-gone:1`, '--count', '1');
    await stale.waitFor('stderr', /some messages on \/orders\/eu may have been lost \(the server no longer holds them\)/);
    assert.equal((await publish(server.url, '/orders/eu', '5')).code, 0);
    assert.equal((await stale.done).code, 0, stale.stderr);
    assert.equal(stale.stdout, line('/orders/eu', 5));
  });

  it('publish --idempotency-key: run again with the same key, it publishes nothing again', async () => {
    const sub = subscriber(server.url, '/orders/keyed', '--data-only', '--count', '2');
    await sub.waitFor('stderr', /subscribed to \/orders\/keyed/);
    const first = await publish(server.url, '/orders/keyed', '"shipped"', '--idempotency-key', 'order-1-shipped', '--verbose');
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /"published":1,"repeated":0/);
    const again = await publish(server.url, '/orders/keyed', '"shipped"', '--idempotency-key', 'order-1-shipped', '--verbose');
    assert.equal(again.code, 0, 'a repeat is no failure');
    assert.match(again.stderr, /"published":0,"repeated":1/);
    assert.equal((await publish(server.url, '/orders/keyed', '"delivered"', '--idempotency-key', 'order-1-delivered')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, '"shipped"\n"delivered"\n');
    const bad = await publish(server.url, '/orders/keyed', '1', '--idempotency-key', 'has space');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--idempotency-key must be 1 to 255 visible ASCII characters/);
  });

  it('publish --idempotency-key tries again while the server restarts (a retry is safe); without a key it fails at once', { timeout: 30_000 }, async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}`;
    const bare = await publish(url, '/orders/restart', '1');
    assert.equal(bare.code, 1, 'no key: no retry');
    assert.doesNotMatch(bare.stderr, /trying again/);
    const keyed = new Cli(['publish', '/orders/restart', '"placed"', '--url', url, '--idempotency-key', 'order-2-placed', '--verbose'], { PERIHELION_API_KEY: KEY });
    await keyed.waitFor('stderr', /not reachable at .* \(trying again in 1 s with the same idempotency key, 1 of 5\)/);
    const running = await start({}, port);
    const { code } = await keyed.done;
    assert.equal(code, 0, keyed.stderr);
    assert.match(keyed.stderr, /"published":1,"repeated":0/);
    assert.equal(running.server.stats().published, 1);
  });

  it('prints only the data with --data-only; publish reads the JSON from stdin with -', async () => {
    const sub = subscriber(server.url, '/ticks', '--data-only', '--count', '4');
    await sub.waitFor('stderr', /subscribed to \/ticks/);
    assert.equal((await publish(server.url, '/ticks', '42')).code, 0);
    assert.equal((await publish(server.url, '/ticks', '"text"')).code, 0);
    assert.equal((await publish(server.url, '/ticks', '-1.5')).code, 0, 'a negative number is data, not an option');
    const piped = await run(['publish', '/ticks', '-', '--url', server.url], { PERIHELION_API_KEY: KEY }, '{"from":"stdin"}\n');
    assert.equal(piped.code, 0, piped.stderr);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, '42\n"text"\n-1.5\n{"from":"stdin"}\n');
  });

  it('publish: a wrong key exits 1 with the API error; no key at all exits 2', async () => {
    const wrong = await run(['publish', '/news/today', '1', '--url', server.url, '--key', 'not-the-key-0123456789']);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /publish failed: unauthorized: send Authorization: Bearer <api key> \(HTTP 401\)/);
    const wrongInEnv = await run(['publish', '/news/today', '1', '--url', server.url], { PERIHELION_API_KEY: 'not-the-key-0123456789' });
    assert.equal(wrongInEnv.code, 1);
    const none = await run(['publish', '/news/today', '1', '--url', server.url]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no API key: set PERIHELION_API_KEY/);
  });

  it('the server\'s address given as an argument (as other clients take it) exits 2 pointing to --url', async () => {
    for (const args of [
      ['publish', server.url, '/news/today', '1'],
      ['publish', server.url, '1'],
      ['subscribe', server.url.replace(/^http/, 'ws'), '/news/**'],
      ['subscribe', server.url],
    ]) {
      const result = await run(args, { PERIHELION_API_KEY: KEY });
      assert.equal(result.code, 2, args.join(' '));
      assert.match(result.stderr, new RegExp(`The server's address goes in --url \\(or PERIHELION_URL\\), e\\.g\\. perihelion ${args[0]} --url http://localhost:8080 <`), `${args.join(' ')}: ${result.stderr}`);
    }
    const other = await run(['subscribe', '/a', '/b']);
    assert.equal(other.code, 2);
    assert.doesNotMatch(other.stderr, /--url/, 'no address given, no hint');
  });

  it('publish: data that is not JSON exits 2 and suggests quoting', async () => {
    const bare = await publish(server.url, '/news/today', 'hello');
    assert.equal(bare.code, 2);
    assert.match(bare.stderr, /<json> is not valid JSON/);
    assert.match(bare.stderr, /'"hello"'/);
    const stdin = await run(['publish', '/news/today', '-', '--url', server.url], { PERIHELION_API_KEY: KEY }, '{oops');
    assert.equal(stdin.code, 2);
    assert.match(stdin.stderr, /the JSON on stdin is not valid JSON/);
    const empty = await run(['publish', '/news/today', '-', '--url', server.url], { PERIHELION_API_KEY: KEY }, '');
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /the JSON on stdin is empty/);
    const ext = await publish(server.url, '/news/today', '1', '--ext', '[1]');
    assert.equal(ext.code, 2);
    assert.match(ext.stderr, /--ext must be a JSON object/);
  });

  it('publish: a number JavaScript cannot hold exits 2; an integer past 2^53 is sent, said rounded on stderr', async () => {
    const sub = subscriber(server.url, '/numbers', '--data-only', '--count', '2');
    await sub.waitFor('stderr', /subscribed to \/numbers/);
    for (const json of ['1e999', '{"a": [1, -1e400]}']) {
      const huge = await publish(server.url, '/numbers', json);
      assert.equal(huge.code, 2, json);
      assert.match(huge.stderr, /the number (1e999|-1e400) is beyond what a JSON number holds in JavaScript \(it would arrive as null\); send it as a string/, json);
    }
    const big = await publish(server.url, '/numbers', '{"id": 12345678901234567890, "note": "1e999 in a string is text"}');
    assert.equal(big.code, 0, big.stderr);
    assert.match(big.stderr, /12345678901234567890 is past 2\^53 and will arrive as 12345678901234567000; send it as a string/);
    const exact = await publish(server.url, '/numbers', '[1e20, 9007199254740991, 0.1]');
    assert.equal(exact.code, 0, exact.stderr);
    assert.equal(exact.stderr, '', 'a number that arrives as written was remarked on');
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, '{"id":12345678901234567000,"note":"1e999 in a string is text"}\n[100000000000000000000,9007199254740991,0.1]\n');
  });

  it('an invalid channel or pattern exits 2 with a message, without contacting the server', async () => {
    // The address is closed: a check made by the server would end in exit code 1, not 2.
    const url = `http://127.0.0.1:${await closedPort()}`;
    const cases: [string[], RegExp][] = [
      [['publish', 'news', '1'], /invalid channel "news": channel must start with "\/"/],
      [['publish', '/news/*', '1'], /invalid channel "\/news\/\*": wildcards/],
      [['publish', '/meta/handshake', '1'], /cannot publish to a meta channel/],
      [['publish', '/news//today', '1'], /empty segment/],
      [['subscribe', 'news'], /invalid channel "news": channel must start with "\/"/],
      [['subscribe', '/news/**/today'], /a wildcard \(\* or \*\*\) may only be the last segment/],
      [['subscribe', '/meta/**'], /meta channels cannot be subscribed to/],
      [['subscribe', '/news', '--count', '0'], /--count must be a whole number from 1/],
      [['subscribe', '/news', '--transport-retry', '1s'], /--transport-retry must be a whole number of milliseconds, got "1s"/],
      [['subscribe', '/news', '--url', 'localhost:8080'], /--url must start with http:\/\//],
      [['subscribe', '/news', '--since', '12'], /--since must be a position epoch:offset, as --positions prints it, got "12"/],
      [['subscribe', '/news/*', '--since', 'abc:1'], /--since for a pattern names the channel: <channel>=<epoch:offset>/],
      [['subscribe', '/news/*', '--since', '/sport/a=abc:1'], /"\/sport\/a" is not a channel of \/news\/\*/],
      [['subscribe', '/news/*', '--since', '/news/a=abc'], /--since must be a position epoch:offset, as --positions prints it, after <channel>=, got "\/news\/a=abc"/],
      [['subscribe', '/news/*', '--since', '/news/a=abc:1', '--since', '/news/a=abc:2'], /--since gives \/news\/a twice/],
      [['subscribe', '/news', '--since', '/other=abc:1'], /"\/other" is not a channel of \/news/],
      [['subscribe', '/news', '--positions', '--data-only'], /--positions adds the position to each line, --data-only prints the data alone/],
      [['publish', '/news'], /missing required argument 'json'/],
    ];
    for (const [args, message] of cases) {
      const result = await run(args.includes('--url') ? args : [...args, '--url', url], { PERIHELION_API_KEY: KEY });
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });

  it('an unreachable server: exit 1 with a message naming the address', async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const published = await publish(url, '/news/today', '1');
    assert.equal(published.code, 1);
    assert.match(published.stderr, new RegExp(`the server is not reachable at ${url} \\(connection refused\\)`));
    const subscribed = await run(['subscribe', '/news/today', '--url', url]);
    assert.equal(subscribed.code, 1);
    assert.match(subscribed.stderr, new RegExp(`the server is not reachable at ws://127\\.0\\.0\\.1:\\d+/bayeux \\(connection refused\\)`));
    const wrongPath = await run(['subscribe', '/news/today', '--url', server.url], { PERIHELION_PATH: '/cometd' });
    assert.equal(wrongPath.code, 1);
    assert.match(wrongPath.stderr, /\/cometd did not accept a WebSocket \(HTTP 404\): is the path right\?/);
  });

  it('a first contact answered with something that is not Bayeux (a web page, a 501): exit 1 saying what it got', async () => {
    for (const [status, type, body] of [
      [200, 'text/html', '<!doctype html><title>Welcome to nginx</title>'],
      [501, 'text/plain', 'Not Implemented'],
      [200, 'application/json', '{"ok": true}'],
    ] as const) {
      const other = createHttpServer((_req, res) => res.writeHead(status, { 'Content-Type': type }).end(body));
      await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
      const url = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
      try {
        const cli = new Cli(['subscribe', '/news/today', '--url', url]);
        const stopper = setTimeout(() => cli.child.kill('SIGKILL'), 15_000);
        const { code } = await cli.done;
        clearTimeout(stopper);
        assert.equal(code, 1, `${status} ${body}: ${cli.stderr}`);
        assert.match(cli.stderr, new RegExp(`^perihelion: ${url.replace(/\./g, '\\.')}/bayeux answered HTTP ${status} \\S+.* \\(${type}: .*\\), which is not a Bayeux reply: is it the address of a Bayeux server\\?`));
      } finally {
        other.closeAllConnections();
        await new Promise((resolve) => other.close(resolve));
      }
    }
  });

  it('before its first session, says each 502/503/504 of a proxy on stderr (without --verbose) and keeps trying', async () => {
    let answers = 0;
    const proxy = createHttpServer((_req, res) => {
      answers++;
      res.writeHead(502, { 'Content-Type': 'text/html', 'Retry-After': '3' }).end('<html><body><h1>502 Bad Gateway</h1></body></html>');
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      const cli = new Cli(['subscribe', '/news/today', '--url', url]);
      await cli.waitFor('stderr', /answered HTTP 502 Bad Gateway \(text\/html: .*\), Retry-After: 3, not Bayeux: a proxy whose server is down or busy\? Trying again/, 2, 20_000);
      assert.equal(cli.child.exitCode, null, 'still trying');
      assert.ok(answers >= 2);
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('a full server: each refused handshake is said with the server\'s advice, and the subscriber comes in once there is room', async () => {
    const full = await start({ maxSessions: 1 });
    // The one session the server takes.
    const taken = (await (await fetch(`${full.url}/bayeux`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]),
    }).then((r) => r.json())) as [{ clientId: string; successful: boolean }])[0];
    assert.equal(taken.successful, true);
    const cli = new Cli(['subscribe', '/news/full', '--url', full.url]);
    await cli.waitFor('stderr', /^perihelion: handshake refused: 503:.*; trying again in 5 s or more, as the server advises \(interval 5000 ms\)$/m);
    assert.equal(cli.child.exitCode, null, 'still trying');
    await api(full.url, 'POST', '/api/disconnect', { clientId: taken.clientId });
    const deadline = Date.now() + 20_000;
    while ((await presence(full.url, '/news/full')).length === 0) {
      assert.ok(Date.now() < deadline, `never subscribed: ${cli.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const reports = cli.stderr;
    await publish(full.url, '/news/full', '"in"');
    await cli.waitFor('stdout', /"in"/);
    assert.equal(cli.stderr, reports, 'nothing more said once connected');
  });

  it('a subscription the server refuses: exit 1 with the 403 error', async () => {
    const guarded = await start({ channels: [{ channel: '/secret/**', subscribe: 'nobody' }] });
    for (const pattern of ['/secret/plans', '/secret/**', '/**']) {
      const refused = await run(['subscribe', pattern, '--url', guarded.url]);
      assert.equal(refused.code, 1, `${pattern}: ${refused.stderr}`);
      assert.match(refused.stderr, new RegExp(`subscription to ${pattern.replace(/\*/g, '\\*')} refused: 403:`));
      assert.equal(refused.stdout, '');
    }
    await stop(guarded);
  });

  it('sends --token (or PERIHELION_TOKEN) in the handshake ext.token; a refused handshake exits 1 with the error', async () => {
    const secured = await start({ anonymous: false, jwt: { secret: JWT_SECRET } });
    const anonymous = await run(['subscribe', '/news/today', '--url', secured.url]);
    assert.equal(anonymous.code, 1);
    assert.match(anonymous.stderr, /handshake refused: 403::Unauthorized: credentials required/);
    const badToken = await run(['subscribe', '/news/today', '--url', secured.url, '--token', hs256({ sub: 'mallory' }, 'x'.repeat(32))]);
    assert.equal(badToken.code, 1);
    assert.match(badToken.stderr, /handshake refused: 403:/);

    const token = hs256({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET);
    const sub = new Cli(['subscribe', '/news/today', '--url', secured.url, '--count', '1', '--verbose'], { PERIHELION_TOKEN: token });
    await sub.waitFor('stderr', /subscribed to \/news\/today/);
    assert.deepEqual((await presence(secured.url, '/news/today')).map((session) => session.user), ['alice']);
    assert.equal((await publish(secured.url, '/news/today', '"for alice"')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, line('/news/today', 'for alice'));
    await stop(secured);
  });

  it('deliver --user reaches every session of that user and nobody else, once per --idempotency-key; --client one session', async () => {
    const secured = await start({ anonymous: false, jwt: { secret: JWT_SECRET } });
    const tokenOf = (sub: string): string => hs256({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET);
    const subscribe = (user: string, count: number): Cli => new Cli(['subscribe', '/notifications', '--url', secured.url, '--data-only', '--count', String(count), '--verbose'], { PERIHELION_TOKEN: tokenOf(user) });
    const [tab1, tab2, bob] = [subscribe('alice', 3), subscribe('alice', 3), subscribe('bob', 1)];
    for (const cli of [tab1, tab2, bob]) await cli.waitFor('stderr', /subscribed to \/notifications/);
    const deliver = (...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> => run(['deliver', '/notifications', ...args, '--url', secured.url], { PERIHELION_API_KEY: KEY });

    const first = await deliver('"shipped"', '--user', 'alice', '--idempotency-key', 'order-9-shipped', '--verbose');
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /delivered on \/notifications to 2 session\(s\) of "alice"/);
    assert.equal((await deliver('"shipped"', '--user', 'alice', '--idempotency-key', 'order-9-shipped')).code, 0, 'the retry');
    assert.equal((await deliver('"delivered"', '--user', 'alice')).code, 0);
    const nobody = await deliver('"hello"', '--user', 'carol');
    assert.equal(nobody.code, 0, 'a user without sessions is no failure');
    assert.match(nobody.stderr, /no session of "carol" is connected: delivered to none/);
    const [bobSession] = (await presence(secured.url, '/notifications')).filter((session) => session.user === 'bob');
    assert.equal((await deliver('"just bob"', '--client', bobSession!.clientId)).code, 0);
    const gone = await deliver('1', '--client', 'no-such-session');
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /deliver failed: session_not_found: no session no-such-session \(HTTP 404\)/);
    // Last, so that a subscriber that wrongly got it would have had to print it.
    assert.equal((await deliver('"the end"', '--user', 'alice')).code, 0);
    for (const tab of [tab1, tab2]) {
      assert.equal((await tab.done).code, 0, tab.stderr);
      assert.equal(tab.stdout, '"shipped"\n"delivered"\n"the end"\n', 'each once, in order');
    }
    assert.equal((await bob.done).code, 0, bob.stderr);
    assert.equal(bob.stdout, '"just bob"\n');

    for (const [args, message] of [
      [['1'], /--user <id> \(every session of a user\) or --client <clientId> \(one session\), one of the two/],
      [['1', '--user', 'alice', '--client', 'x'], /one of the two/],
      [['1', '--user', ''], /--user is empty/],
      [['not json', '--user', 'alice'], /is not valid JSON/],
      [['1', '--user', 'alice', '--idempotency-key', 'two words'], /--idempotency-key must be 1 to 255 visible ASCII characters/],
    ] as [string[], RegExp][]) {
      const refused = await deliver(...args);
      assert.equal(refused.code, 2, args.join(' '));
      assert.match(refused.stderr, message, args.join(' '));
    }
    const meta = await run(['deliver', '/meta/connect', '1', '--user', 'alice', '--url', secured.url], { PERIHELION_API_KEY: KEY });
    assert.equal(meta.code, 2);
    assert.match(meta.stderr, /cannot deliver on a meta channel/);
    await stop(secured);
  });

  it('survives the server ending its session: handshakes again, subscribes again and keeps printing', async () => {
    const sub = subscriber(server.url, '/room/1', '--count', '2');
    await sub.waitFor('stderr', /subscribed to \/room\/1/);
    assert.equal((await publish(server.url, '/room/1', '"before"')).code, 0);
    await sub.waitFor('stdout', /before/);
    const [first] = await presence(server.url, '/room/1');
    assert.ok(first, 'the subscriber is present');
    assert.deepEqual(await api(server.url, 'POST', '/api/disconnect', { clientId: first.clientId }), { disconnected: 1 });
    await sub.waitFor('stderr', /subscribed to \/room\/1/, 2);
    const [second] = await presence(server.url, '/room/1');
    assert.ok(second && second.clientId !== first.clientId, 'a new session took the old one\'s place');
    assert.equal((await publish(server.url, '/room/1', '"after"')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, line('/room/1', 'before') + line('/room/1', 'after'));
    assert.match(sub.stderr, /the server ended the session; starting a new one/);
  });

  it('reconnects after the connection drops and subscribes again on the server that is back', async () => {
    const first = await start();
    const port = Number(new URL(first.url).port);
    const sub = subscriber(first.url, '/up', '--count', '2');
    await sub.waitFor('stderr', /subscribed to \/up/);
    assert.equal((await publish(first.url, '/up', '1')).code, 0);
    await sub.waitFor('stdout', /"data":1/);
    await stop(first);
    await sub.waitFor('stderr', /reconnecting in \d/);
    const second = await start({}, port);
    await sub.waitFor('stderr', /subscribed to \/up/, 2);
    assert.equal((await publish(second.url, '/up', '2')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, line('/up', 1) + line('/up', 2));
    await stop(second);
  });

  it('says on stderr, without --verbose, that messages may have been lost (a restarted server kept no history)', async () => {
    const first = await start();
    const port = Number(new URL(first.url).port);
    const sub = new Cli(['subscribe', '/gone', '--url', first.url, '--count', '2']);
    await subscribed(first, '/gone');
    assert.equal((await publish(first.url, '/gone', '1')).code, 0);
    await sub.waitFor('stdout', /"data":1/);
    await stop(first);
    const second = await start({}, port);
    await sub.waitFor('stderr', /some messages on \/gone may have been lost \(the server no longer holds them\)/);
    await subscribed(second, '/gone');
    assert.equal((await publish(second.url, '/gone', '2')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.doesNotMatch(sub.stderr, /subscribed to|connected over/, 'no status without --verbose');
    await stop(second);
  });

  it('falls back to HTTP when the server offers no WebSocket', async () => {
    for (const transports of [['long-polling'], ['http-streaming', 'long-polling']] as const) {
      const http = await start({ transports: [...transports] });
      const sub = subscriber(http.url, '/plain', '--count', '1');
      await sub.waitFor('stderr', /subscribed to \/plain/);
      assert.match(sub.stderr, new RegExp(`connected over ${transports[0]}`));
      assert.equal((await publish(http.url, '/plain', '"over http"')).code, 0);
      assert.equal((await sub.done).code, 0, sub.stderr);
      assert.equal(sub.stdout, line('/plain', 'over http'));
      await stop(http);
    }
  });

  it('moves its session to a WebSocket that opens after the fall-back to HTTP (--transport-retry), and says so', async () => {
    // One WebSocket per address, taken by another socket of this machine: the subscriber falls back.
    const limited = await start({ maxWebsocketsPerIp: 1, timeout: 300 });
    const held = new WebSocket(limited.url.replace(/^http/, 'ws') + '/bayeux');
    await once(held, 'open');
    const sub = subscriber(limited.url, '/moving', '--count', '2', '--transport-retry', '300');
    await sub.waitFor('stderr', /subscribed to \/moving/);
    assert.match(sub.stderr, /connected over http-streaming/);
    assert.equal((await publish(limited.url, '/moving', '1')).code, 0);
    await sub.waitFor('stdout', /"data":1/);
    held.close();
    await sub.waitFor('stderr', /moved from http-streaming to websocket, same session/);
    assert.equal((await publish(limited.url, '/moving', '2')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.equal(sub.stdout, line('/moving', 1) + line('/moving', 2));
    // Leaving the stream, the session asked again for what it may have carried unread, and lost
    // nothing: no recovery to report, and no reconnection.
    assert.doesNotMatch(sub.stderr, /recovered|lost|reconnecting/);
    assert.equal(sub.stderr.match(/subscribed to/g)?.length, 1, `subscribed once, in its one session: ${sub.stderr}`);
    assert.equal(sub.stderr.match(/connected over/g)?.length, 1, sub.stderr);
    await stop(limited);
  });

  it('SIGINT and SIGTERM end the session with /meta/disconnect and exit 0', async () => {
    const reasons: string[] = [];
    server.server.on('disconnect', (_session, reason) => void reasons.push(reason));
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      const sub = subscriber(server.url, `/quiet/${signal}`);
      await sub.waitFor('stderr', /subscribed to/);
      assert.equal((await presence(server.url, `/quiet/${signal}`)).length, 1);
      sub.child.kill(signal);
      const { code } = await sub.done;
      assert.equal(code, 0, sub.stderr);
      assert.match(sub.stderr, /disconnecting/);
      assert.deepEqual(await presence(server.url, `/quiet/${signal}`), [], 'the session ended at once, not when swept');
    }
    assert.deepEqual(reasons, ['client', 'client']);
  });

  it('stops quietly when the reader of its output goes away (`| head -n 1`)', async () => {
    const sub = subscriber(server.url, '/pipe');
    await sub.waitFor('stderr', /subscribed to \/pipe/);
    assert.equal((await publish(server.url, '/pipe', '1')).code, 0);
    await sub.waitFor('stdout', /"data":1/);
    sub.child.stdout.destroy();
    assert.equal((await publish(server.url, '/pipe', '2')).code, 0);
    assert.equal((await sub.done).code, 0, sub.stderr);
    assert.match(sub.stderr, /disconnecting/);
  });

  it('explains itself in --help, with examples', async () => {
    const publishHelp = await run(['publish', '--help']);
    assert.equal(publishHelp.code, 0);
    assert.match(publishHelp.stdout, /prefer PERIHELION_API_KEY/);
    assert.match(publishHelp.stdout, /Examples:\n {2}export PERIHELION_API_KEY=/);
    const subscribeHelp = await run(['subscribe', '--help']);
    assert.equal(subscribeHelp.code, 0);
    assert.match(subscribeHelp.stdout, /Examples:\n {2}perihelion subscribe '\/news\/\*\*' \| jq/);
    assert.match(subscribeHelp.stdout, /prefer\s+PERIHELION_TOKEN/);
    assert.match(subscribeHelp.stdout, /--transport-retry <ms>/);
  });
});
