/** `perihelion serve --redis`: two processes sharing one Redis act as one server. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { resolveSettings, serve as serveHere } from '../src/index.js';

const BIN = fileURLToPath(new URL('../src/bin.js', import.meta.url));
const REDIS_URL = process.env.PERIHELION_TEST_REDIS ?? 'redis://127.0.0.1:6379';
const KEY = 'cluster-cli-api-key-0123';

describe('settings: --redis', () => {
  it('takes the Redis URL from --redis, PERIHELION_REDIS or the config file, and the prefix with it', () => {
    assert.equal(resolveSettings({ redis: 'redis://a:6379' }, { PERIHELION_REDIS: 'redis://b:6379' }).redis, 'redis://a:6379');
    assert.equal(resolveSettings({}, { PERIHELION_REDIS: 'redis://b:6379', PERIHELION_REDIS_PREFIX: 'app1:' }).redisPrefix, 'app1:');
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-redis-'));
    const config = join(dir, 'cluster.yaml');
    writeFileSync(config, 'redis: redis://c:6379\nredisPrefix: "c:"\n');
    const fromFile = resolveSettings({ config }, {});
    assert.equal(fromFile.redis, 'redis://c:6379');
    assert.equal(fromFile.redisPrefix, 'c:');
    assert.deepEqual(fromFile.server, {}, 'not a server option: the CLI makes the engine');
    assert.equal(resolveSettings({}, {}).redis, undefined, 'the memory engine by default');
    writeFileSync(config, 'redis: 6379\n');
    assert.throws(() => resolveSettings({ config }, {}), /setting "redis" must be a string like "redis:\/\/127\.0\.0\.1:6379"/);
    assert.throws(() => resolveSettings({ redisPrefix: 'x:' }, {}), /--redis-prefix needs --redis/);
    // Node liveness: flags, environment and file, checked as whole numbers; only with --redis.
    const liveness = resolveSettings({ redis: 'redis://a:6379', redisNodeTimeout: '4000' }, { PERIHELION_REDIS_HEARTBEAT_INTERVAL: '1000' });
    assert.deepEqual([liveness.redisHeartbeatInterval, liveness.redisNodeTimeout], [1000, 4000]);
    writeFileSync(config, 'redis: redis://c:6379\nredisNodeTimeout: 3000\n');
    assert.equal(resolveSettings({ config }, {}).redisNodeTimeout, 3000);
    writeFileSync(config, 'redis: redis://c:6379\nredisNodeTimeout: soon\n');
    assert.throws(() => resolveSettings({ config }, {}), /setting "redisNodeTimeout" must be a whole number of ms/);
    assert.throws(() => resolveSettings({ redisNodeTimeout: '4000' }, {}), /--redis-node-timeout needs --redis/);
    assert.throws(() => resolveSettings({ redis: 'redis://a:6379', redisNodeTimeout: 'x' }, {}), /--redis-node-timeout/);
  });

  it('takes the bound of messages between nodes through pub/sub from --redis-node-message-inline-bytes, the environment or the file, only with --redis, and gives it to the engine', async () => {
    assert.equal(resolveSettings({ redis: 'redis://a:6379', redisNodeMessageInlineBytes: '1000' }, {}).redisNodeMessageInlineBytes, 1000);
    assert.equal(resolveSettings({ redis: 'redis://a:6379' }, { PERIHELION_REDIS_NODE_MESSAGE_INLINE_BYTES: '0' }).redisNodeMessageInlineBytes, 0);
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-redis-'));
    const config = join(dir, 'cluster.yaml');
    writeFileSync(config, 'redis: redis://c:6379\nredisNodeMessageInlineBytes: lots\n');
    assert.throws(() => resolveSettings({ config }, {}), /setting "redisNodeMessageInlineBytes" must be a whole number of bytes/);
    assert.throws(() => resolveSettings({ redisNodeMessageInlineBytes: '1000' }, {}), /--redis-node-message-inline-bytes needs --redis/);
    assert.throws(() => resolveSettings({ redis: 'redis://a:6379', redisNodeMessageInlineBytes: '-1' }, {}), /--redis-node-message-inline-bytes must be a whole number/);
    // The node the command starts uses it (a range past the engine's refused at start: exit 2, below).
    const prefix = `perihelion-test:cli-inline:${process.pid}:${randomBytes(4).toString('hex')}:`;
    const running = await serveHere({ server: {}, port: 0, host: '127.0.0.1', demo: false, logLevel: 'silent', redis: REDIS_URL, redisPrefix: prefix, redisNodeMessageInlineBytes: 1000 }, () => {});
    const client = new Redis(REDIS_URL);
    try {
      assert.equal((running.server.engine as unknown as { options: { nodeMessageInlineBytes: number } }).options.nodeMessageInlineBytes, 1000);
    } finally {
      await running.stop();
      const keys = await client.keys(`${prefix}*`);
      if (keys.length > 0) await client.del(...keys);
      client.disconnect();
    }
  });

  it('takes a Redis Cluster from --redis-cluster and its partitions from --redis-partitions, only with --redis', () => {
    const onCluster = resolveSettings({ redis: 'redis://a:7001,redis://b:7002', redisCluster: true, redisPartitions: '32' }, {});
    assert.deepEqual([onCluster.redisCluster, onCluster.redisPartitions], [true, 32]);
    const fromEnv = resolveSettings({}, { PERIHELION_REDIS: 'redis://a:7001', PERIHELION_REDIS_CLUSTER: 'true' });
    assert.equal(fromEnv.redisCluster, true);
    const dir = mkdtempSync(join(tmpdir(), 'perihelion-redis-'));
    const config = join(dir, 'cluster.yaml');
    writeFileSync(config, 'redis: redis://c:7001\nredisCluster: yes please\n');
    assert.throws(() => resolveSettings({ config }, {}), /setting "redisCluster" must be true or false/);
    assert.throws(() => resolveSettings({ redisCluster: true }, {}), /--redis-cluster needs --redis/);
    assert.throws(() => resolveSettings({ redis: 'redis://a:7001', redisPartitions: '0' }, {}), /"redisPartitions" must be a whole number from 1 to 1024, got 0/);
  });
});

function serve(args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, [BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--no-demo', ...args], {
    env: { ...process.env, PORT: '', HOST: '', PERIHELION_API_KEY: KEY, ...env },
  });
}

/** Resolves to what the server printed once its summary is complete. */
function summary(child: ChildProcessWithoutNullStreams): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    let errors = '';
    child.stderr.on('data', (chunk) => (errors += String(chunk)));
    const onData = (chunk: Buffer): void => {
      output += String(chunk);
      if (/HTTP API:/.test(output)) {
        child.stdout.off('data', onData);
        child.stdout.resume();
        resolve(output);
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', (code) => reject(new Error(`exited with ${code} before listening: ${output}${errors}`)));
  });
}

async function exitOf(child: ChildProcessWithoutNullStreams): Promise<{ code: number | null; stderr: string }> {
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += String(chunk)));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stderr };
}

/** A browser-like poster: keeps the session cookie (sessions are bound to their browser). */
let cookie = '';
async function post(url: string, body: unknown): Promise<Array<Record<string, unknown>>> {
  const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...(cookie ? { Cookie: cookie } : {}) }, body: JSON.stringify(body) });
  const set = response.headers.getSetCookie()[0];
  if (set) cookie = set.split(';')[0]!;
  return (await response.json()) as Array<Record<string, unknown>>;
}

/**
 * A long-polling client of the node at `url1` subscribes to /news; `data` published through the
 * HTTP API of the node at `url2` reaches it in its held connect. Resolves to its session and what
 * it got on /news.
 */
async function acrossNodes(url1: string, url2: string, data: unknown): Promise<{ clientId: string; delivered: Array<Record<string, unknown>> }> {
  cookie = '';
  const [hello] = await post(`${url1}/bayeux`, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
  const clientId = hello!.clientId as string;
  await post(`${url1}/bayeux`, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
  const [subscribed] = await post(`${url1}/bayeux`, [{ channel: '/meta/subscribe', clientId, subscription: '/news' }]);
  assert.equal(subscribed!.successful, true, JSON.stringify(subscribed));
  const held = post(`${url1}/bayeux`, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
  const published = await fetch(`${url2}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: '/news', data }),
  });
  assert.equal(published.status, 200);
  const delivered = (await held).filter((m) => m.channel === '/news');
  assert.deepEqual(delivered.map((m) => m.data), [data]);
  return { clientId, delivered };
}

/** The signal handlers are installed just after the summary is printed. */
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 300));

describe('perihelion serve --redis', () => {
  const prefix = `perihelion-test:cli:${process.pid}:${randomBytes(4).toString('hex')}:`;
  const children: ChildProcessWithoutNullStreams[] = [];

  before(async () => {
    const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (error) {
      throw new Error(`These tests need a Redis server at ${REDIS_URL} (or PERIHELION_TEST_REDIS): ${(error as Error).message}`);
    } finally {
      client.disconnect();
    }
  });
  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    const client = new Redis(REDIS_URL);
    const keys = await client.keys(`${prefix}*`);
    if (keys.length > 0) await client.del(...keys);
    client.disconnect();
  });

  it('runs two nodes as one server: a message published through the API of one reaches a client of the other', async () => {
    const one = serve(['--redis', REDIS_URL, '--redis-prefix', prefix]);
    const two = serve([], { PERIHELION_REDIS: REDIS_URL, PERIHELION_REDIS_PREFIX: prefix });
    children.push(one, two);
    const [first, second] = await Promise.all([summary(one), summary(two)]);
    for (const output of [first, second]) assert.match(output, new RegExp(`engine: redis \\(cluster mode: redis://127\\.0\\.0\\.1:6379.*key prefix "${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`));
    const url1 = /listening on (http:\/\/\S+)/.exec(first)![1]!;
    const url2 = /listening on (http:\/\/\S+)/.exec(second)![1]!;

    const { clientId, delivered } = await acrossNodes(url1, url2, { headline: 'from node two' });
    assert.equal((delivered[0]!.ext as { position: { offset: number } }).position.offset, 1);

    const presence = await fetch(`${url2}/api/presence?channel=/news`, { headers: { Authorization: `Bearer ${KEY}` } });
    assert.deepEqual(((await presence.json()) as { sessions: Array<{ clientId: string }> }).sessions.map((s) => s.clientId), [clientId]);
    await settle();
    for (const child of [one, two]) child.kill('SIGTERM');
    const exits = await Promise.all([one, two].map(exitOf));
    assert.deepEqual(exits.map((e) => e.code), [0, 0], exits.map((e) => e.stderr).join('\n'));
  });

  it('exits with status 2 and says why when Redis cannot be reached or the URL is wrong', async () => {
    const unreachable = await exitOf(serve(['--redis', 'redis://127.0.0.1:1']));
    assert.equal(unreachable.code, 2);
    assert.match(unreachable.stderr, /perihelion: cannot use Redis at redis:\/\/127\.0\.0\.1:1: connect ECONNREFUSED/);
    // Said once, as one plain line: not also as a JSON log line with a stack.
    assert.equal(unreachable.stderr.trim().split('\n').length, 1, unreachable.stderr);
    const wrong = await exitOf(serve([], { PERIHELION_REDIS: 'localhost:6379' }));
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /perihelion: the Redis URL "localhost:6379" must start with redis:\/\/ or rediss:\/\//);
    const past = await exitOf(serve(['--redis', REDIS_URL, '--redis-node-message-inline-bytes', '99999999999']));
    assert.equal(past.code, 2);
    assert.match(past.stderr, /perihelion: option "nodeMessageInlineBytes" must be a whole number of bytes from 0/);
  });

  it('says at start-up that the memory engine is active without --redis', async () => {
    const child = serve([]);
    children.push(child);
    assert.match(await summary(child), /engine: memory \(this process only; --redis for cluster mode\)/);
    await settle();
    child.kill('SIGTERM');
    assert.equal((await exitOf(child)).code, 0);
  });
});

describe('perihelion serve --redis … --redis-cluster', () => {
  const children: ChildProcessWithoutNullStreams[] = [];
  let cluster: { url: string; stop(): Promise<void> } | null = null;

  before(async () => {
    const starter = new URL('../../../../examples/cluster/redis-cluster.mjs', import.meta.url).href;
    const { startRedisCluster } = (await import(starter)) as { startRedisCluster: () => Promise<{ url: string; stop(): Promise<void> }> };
    cluster = await startRedisCluster();
  });
  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    await cluster?.stop();
  });

  it('runs two nodes on a Redis Cluster as one server, and says so at start-up', async () => {
    const one = serve(['--redis', cluster!.url, '--redis-cluster']);
    const two = serve(['--redis-cluster'], { PERIHELION_REDIS: cluster!.url });
    children.push(one, two);
    const [first, second] = await Promise.all([summary(one), summary(two)]);
    for (const output of [first, second]) assert.match(output, /engine: redis \(cluster mode: Redis Cluster redis:\/\/127\.0\.0\.1:\d+\/?,redis:.*, 16 partitions, key prefix "perihelion:"/);
    const url1 = /listening on (http:\/\/\S+)/.exec(first)![1]!;
    const url2 = /listening on (http:\/\/\S+)/.exec(second)![1]!;
    await acrossNodes(url1, url2, { headline: 'through a shard' });
    await settle();
    for (const child of [one, two]) child.kill('SIGTERM');
    const exits = await Promise.all([one, two].map(exitOf));
    assert.deepEqual(exits.map((e) => e.code), [0, 0], exits.map((e) => e.stderr).join('\n'));
  });
});

describe('perihelion serve --redis: an outage, as its log tells it', () => {
  let redis: ChildProcess | null = null;
  let node: ChildProcessWithoutNullStreams | null = null;
  after(() => {
    node?.kill('SIGKILL');
    redis?.kill('SIGKILL');
  });

  /** A Redis of this test's own, which it may kill. */
  async function ownRedis(port: number): Promise<ChildProcess> {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    child.on('error', () => {});
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    probe.on('error', () => {});
    for (const deadline = Date.now() + 5000; ; ) {
      try {
        await probe.connect();
        await probe.ping();
        probe.disconnect();
        return child;
      } catch (error) {
        probe.disconnect();
        if (Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}: ${(error as Error).message}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  it('logs the lost connection with its cause said once, then at info that Redis answers again', { timeout: 30_000 }, async () => {
    const probe = createNetServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as AddressInfo).port;
    probe.close();
    redis = await ownRedis(port);
    node = serve(['--redis', `redis://127.0.0.1:${port}`, '--redis-heartbeat-interval', '200']);
    let log = '';
    node.stderr.on('data', (chunk) => (log += String(chunk)));
    await summary(node);
    const logged = (pattern: RegExp): Promise<void> =>
      new Promise((resolve, reject) => {
        const deadline = Date.now() + 10_000;
        const look = (): void => {
          if (pattern.test(log)) resolve();
          else if (Date.now() > deadline) reject(new Error(`not logged: ${pattern}; the log: ${log}`));
          else setTimeout(look, 50);
        };
        look();
      });
    redis.kill('SIGKILL');
    await once(redis, 'exit');
    await logged(/lost the connection to Redis/);
    redis = await ownRedis(port);
    await logged(/answers again/);
    const lines = log.trim().split('\n').map((line) => JSON.parse(line) as { level: number; msg?: string; code?: string; cause?: string; err?: unknown });
    const lost = lines.findIndex((line) => /lost the connection to Redis/.test(line.msg ?? ''));
    const { level, msg, code, cause, err } = lines[lost]!;
    assert.equal(level, 40, 'an outage the node survives is a warning');
    assert.equal(code, 'ERR_ENGINE_UNAVAILABLE');
    assert.ok(cause, 'the cause is logged');
    assert.equal(msg, `lost the connection to Redis; serving this node's sessions only until it is back: ${cause}`, 'the cause said twice');
    assert.equal(err, undefined, 'a stack trace for an expected condition');
    const back = lines.findIndex((line) => line.level === 30 && /^Redis at redis:\/\/127\.0\.0\.1:\d+ answers again, \d+\.\d s after the first failure/.test(line.msg ?? ''));
    assert.ok(back > lost, log);
    node.kill('SIGTERM');
    assert.equal((await exitOf(node)).code, 0);
    node = null;
  });
});
