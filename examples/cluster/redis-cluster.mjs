/**
 * A local Redis Cluster of three shards (no replicas), for trying Perihelion past one Redis and for
 * the tests that run the Redis engine on a cluster:
 *
 *   node examples/cluster/redis-cluster.mjs [--port 7001] [--shards 3]
 *
 * starts `redis-server --cluster-enabled yes` on consecutive ports (each also takes its port +
 * 10000 for the cluster bus), joins them with `redis-cli --cluster create`, waits until the
 * cluster is ready, prints its URL (give it to `perihelion serve --redis <url> --redis-cluster`), and stops it
 * on Ctrl-C. Nothing is kept: the nodes run from a temporary folder removed at stop.
 *
 * For tests: startRedisServer() → { url, ports, stop() }, one plain Redis on a free port, and
 * startRedisCluster({ port, shards }) → { url, ports, restart(port), stop() }; port 0
 * (the default) picks free ports; restart(port) kills that shard (SIGKILL) and starts it again,
 * empty, in its place in the cluster.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Every redis-server started here: killed when this process exits, even by a crash. */
const running = new Set();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function spawnRedis(args) {
  const child = spawn('redis-server', args, { stdio: 'ignore' });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

export async function startRedisCluster({ port = 0, shards = 3, host = '127.0.0.1' } = {}) {
  await requireCommands();
  const base = port === 0 ? await freeBase(shards, host) : port;
  const ports = Array.from({ length: shards }, (_, i) => base + i);
  const dir = mkdtempSync(join(tmpdir(), 'perihelion-redis-cluster-'));
  const children = new Map();
  const kill = (child) =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', resolve);
      child.kill('SIGKILL');
    });
  const stop = async () => {
    await Promise.all([...children.values()].map(kill));
    rmSync(dir, { recursive: true, force: true });
  };
  // A shard keeps its cluster identity in its nodes file, so started again it takes its slots back.
  const launch = async (nodePort) => {
    const child = spawnRedis([
      '--port', String(nodePort), '--bind', host, '--cluster-enabled', 'yes',
      '--cluster-config-file', join(dir, `nodes-${nodePort}.conf`), '--cluster-node-timeout', '5000',
      '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', join(dir, `${nodePort}.log`),
    ]);
    children.set(nodePort, child);
    await until(`redis-server on port ${nodePort} to answer`, async () => (await cli(host, nodePort, 'PING')) === 'PONG');
  };
  const ready = async () => {
    for (const nodePort of ports) {
      await until(`the cluster to be ready on port ${nodePort}`, async () => (await cli(host, nodePort, 'CLUSTER', 'INFO')).includes('cluster_state:ok'));
    }
  };
  try {
    for (const nodePort of ports) await launch(nodePort);
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `${host}:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { timeout: 30_000 });
    await ready();
  } catch (error) {
    await stop();
    throw new Error(`could not start a local Redis Cluster on ports ${ports.join(', ')}: ${error.message}`);
  }
  const restart = async (nodePort) => {
    await kill(children.get(nodePort));
    await launch(nodePort);
    await ready();
  };
  return { url: ports.map((p) => `redis://${host}:${p}`).join(','), ports, restart, stop };
}

/**
 * One plain redis-server (no cluster) on a free port, run like a shard (nothing kept, a temporary
 * folder): { url, ports, stop() }, for measuring one Redis against a cluster on equal terms.
 */
export async function startRedisServer({ host = '127.0.0.1' } = {}) {
  await requireCommands();
  const port = await freeBase(1, host);
  const dir = mkdtempSync(join(tmpdir(), 'perihelion-redis-'));
  const child = spawnRedis(['--port', String(port), '--bind', host, '--save', '', '--appendonly', 'no', '--dir', dir]);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await until(`redis-server on port ${port} to answer`, async () => (await cli(host, port, 'PING')) === 'PONG');
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: `redis://${host}:${port}`, ports: [port], stop };
}

async function requireCommands() {
  for (const command of ['redis-server', 'redis-cli']) {
    try {
      await run(command, ['--version']);
    } catch {
      throw new Error(`a local Redis Cluster needs ${command} (Debian: apt-get install redis-server)`);
    }
  }
}

async function cli(host, port, ...args) {
  try {
    const { stdout } = await run('redis-cli', ['-h', host, '-p', String(port), ...args], { timeout: 2000 });
    return stdout.trim();
  } catch {
    return '';
  }
}

async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A first port such that it and the next shards - 1, and each one's cluster bus port (+10000), are free. */
async function freeBase(shards, host) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    const ports = Array.from({ length: shards }, (_, i) => base + i).flatMap((p) => [p, p + 10_000]);
    if ((await Promise.all(ports.map((p) => isFree(p, host)))).every(Boolean)) return base;
  }
  throw new Error('found no free ports for a Redis Cluster');
}

function isFree(port, host) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const at = process.argv.indexOf(`--${name}`);
    const value = at > 0 ? Number(process.argv[at + 1]) : fallback;
    if (!Number.isInteger(value) || value < 0) {
      console.error(`--${name} must be a whole number`);
      process.exit(2);
    }
    return value;
  };
  const cluster = await startRedisCluster({ port: arg('port', 7001), shards: arg('shards', 3) });
  console.log(`Redis Cluster of ${cluster.ports.length} shards ready: ${cluster.url}`);
  console.log(`  perihelion serve --redis ${cluster.url} --redis-cluster`);
  const stop = async () => {
    await cluster.stop();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
