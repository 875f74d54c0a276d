/**
 * A Perihelion cluster behind a round-robin balancer, in one command:
 *
 *   node examples/cluster/start.mjs          (npm run example:cluster)
 *
 * starts three `perihelion serve --redis …` nodes (ports 8081–8083) as child processes sharing
 * one Redis, and a proxy on 8080 that sends every request to the next node in turn, with no
 * sticky sessions. Open http://localhost:8080: the demo works although each of its requests may
 * land on another node. Ctrl-C (or SIGTERM) stops everything.
 *
 *   node examples/cluster/start.mjs --redis-cluster
 *
 * does the same on a Redis Cluster: a local one of three shards that it starts (and stops), or the
 * one whose nodes REDIS_URL lists (comma-separated).
 *
 * Environment: PORT (the proxy, default 8080; the nodes take the next ports), NODES (default 3),
 * REDIS_URL (default redis://127.0.0.1:6379), PERIHELION_REDIS_PREFIX (default
 * "perihelion-example:"), PERIHELION_API_KEY (default: a random one, printed).
 *
 * For tests: startCluster({ port, nodes, prefix, redis, redisCluster, … }) → { url, nodes, proxy, close() }.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startProxy } from './round-robin-proxy.mjs';
import { DEFAULT_REDIS_URL, requireRedis } from './redis.mjs';
import { startRedisCluster } from './redis-cluster.mjs';

const CLI = fileURLToPath(new URL('../../packages/cli/bin/perihelion.js', import.meta.url));

/** What the cluster's clients may publish besides the demo's channels: anything under /cluster/. */
export const CLUSTER_RULES = [{ channel: '/cluster/**', publish: 'anyone' }];

/**
 * Starts `nodes` Perihelion nodes (a count: on ports port+1…port+n, or ephemeral ones when port
 * is 0; or an array of ports) sharing `redis` under `prefix`, and the round-robin proxy on `port`.
 * `redisCluster`: `redis` lists nodes of a Redis Cluster.
 *
 * Options: `demo` (default true), `rules` (channel rules added to the demo's; default CLUSTER_RULES),
 * `apiKey` (PERIHELION_API_KEY of every node; default a random one), `args` (more flags for every
 * node), `env` (more environment), `logLevel` (nodes' JSON logs, default "warn"), `onLog(port, line)`
 * (each line a node writes; default: kept, and shown if it fails to start), `onRequest(req, target)`
 * (every request the proxy passes on, with the node it chose), `failTimeout` (how long the proxy
 * skips a node it could not reach, ms; default 10000).
 */
export async function startCluster({
  port = 8080,
  nodes = 3,
  prefix = 'perihelion-example:',
  redis = DEFAULT_REDIS_URL,
  redisCluster = false,
  host = '127.0.0.1',
  demo = true,
  rules = CLUSTER_RULES,
  apiKey = randomBytes(16).toString('hex'),
  args = [],
  env = {},
  logLevel = 'warn',
  onLog,
  onRequest,
  failTimeout,
} = {}) {
  await requireRedis(redis, redisCluster);
  const ports = Array.isArray(nodes) ? nodes : Array.from({ length: nodes }, (_, i) => (port === 0 ? 0 : port + 1 + i));
  const rulesDir = mkdtempSync(join(tmpdir(), 'perihelion-cluster-'));
  const rulesFile = join(rulesDir, 'rules.json');
  writeFileSync(rulesFile, JSON.stringify(rules));
  // The balancer runs on this machine and appends each client's address to X-Forwarded-For:
  // trusting it, the nodes count each client against the per-address limits, not the balancer.
  const flags = ['--redis', redis, ...(redisCluster ? ['--redis-cluster'] : []), '--redis-prefix', prefix, '--rules', rulesFile, '--trust-proxy', 'loopback', '--log-level', logLevel, ...(demo ? [] : ['--no-demo']), ...args];
  const childEnv = { ...process.env, ...env, PERIHELION_API_KEY: apiKey };
  delete childEnv.PORT;

  const started = [];
  let proxy;
  // cluster.onExit(node, how), if set, hears of a node that stops (a crash, a kill).
  const onExit = (node, how) => cluster?.onExit?.(started.find((n) => n.port === node.port) ?? node, how);
  let cluster;
  try {
    const results = await Promise.allSettled(ports.map((nodePort) => startNode({ port: nodePort, host, flags, env: childEnv, onLog, onExit })));
    for (const result of results) if (result.status === 'fulfilled') started.push(result.value);
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw failed.reason;
    proxy = await startProxy({ port, host, targets: started.map((node) => node.url), onRequest, failTimeout });
  } catch (error) {
    await Promise.all(started.map((node) => node.kill('SIGKILL')));
    rmSync(rulesDir, { recursive: true, force: true });
    throw error;
  }
  cluster = {
    url: proxy.url,
    prefix,
    redis,
    redisCluster,
    apiKey,
    nodes: started,
    proxy,
    /** Stops the proxy, then every node (SIGTERM: they drain their sessions). */
    async close() {
      await proxy.close();
      await Promise.all(started.map((node) => node.kill('SIGTERM')));
      rmSync(rulesDir, { recursive: true, force: true });
    },
  };
  return cluster;
}

/**
 * One `perihelion serve` child process: resolves once it listens, with
 * { port, url, nodeId, pid, alive, kill(signal), restart() }. `restart()` starts it again on the
 * same port (with a new node id).
 */
async function startNode({ port, host, flags, env, onLog, onExit }) {
  const node = { port, url: '', nodeId: '', pid: 0, alive: false, child: null, log: [] };
  const launch = () =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, 'serve', '--port', String(node.port), '--host', host, ...flags], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      node.child = child;
      node.log = [];
      const keep = (line) => {
        node.log.push(line);
        if (node.log.length > 40) node.log.shift();
        onLog?.(node.port, line);
      };
      let listening = false;
      createInterface({ input: child.stdout }).on('line', (line) => {
        keep(line);
        const url = /^Perihelion listening on (http:\/\/\S+)/.exec(line);
        if (url) {
          node.url = url[1];
          node.port = Number(new URL(url[1]).port);
          listening = true;
        }
        const engine = /engine: redis .*node ([0-9a-z]+)\)/.exec(line);
        if (engine && listening) {
          node.nodeId = engine[1];
          node.pid = child.pid;
          node.alive = true;
          resolve();
        }
      });
      createInterface({ input: child.stderr }).on('line', keep);
      child.on('exit', (code, signal) => {
        const wasReady = node.alive;
        node.alive = false;
        if (wasReady) onExit?.(node, signal ?? `code ${code}`);
        // (No effect once it was ready.)
        reject(new Error(`perihelion serve on port ${node.port} exited (${signal ?? `code ${code}`}) before it was ready:\n${node.log.join('\n')}`));
      });
      child.on('error', reject);
    });
  await launch();
  return {
    get port() {
      return node.port;
    },
    get url() {
      return node.url;
    },
    /** The node's id in Redis (what the engine's `owner` hash names). */
    get nodeId() {
      return node.nodeId;
    },
    get pid() {
      return node.pid;
    },
    get alive() {
      return node.alive;
    },
    /** The last lines it wrote (stdout and stderr). */
    get log() {
      return [...node.log];
    },
    /** Sends `signal` (default SIGTERM) and resolves once the process has exited; SIGKILL after 10 s. */
    kill(signal = 'SIGTERM') {
      const child = node.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      return new Promise((resolve) => {
        const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => {
          clearTimeout(force);
          resolve();
        });
        child.kill(signal);
      });
    },
    /** Starts it again on the same port; resolves once it listens. */
    async restart() {
      await this.kill('SIGTERM');
      node.nodeId = '';
      await launch();
    },
  };
}

async function main() {
  const port = Number(process.env.PORT ?? 8080);
  const count = Number(process.env.NODES ?? 3);
  const redisCluster = process.argv.includes('--redis-cluster');
  // A Redis Cluster of its own unless REDIS_URL names one.
  const localRedis = redisCluster && !process.env.REDIS_URL ? await startRedisCluster() : null;
  const redis = localRedis?.url ?? process.env.REDIS_URL ?? DEFAULT_REDIS_URL;
  const prefix = process.env.PERIHELION_REDIS_PREFIX ?? 'perihelion-example:';
  const apiKey = process.env.PERIHELION_API_KEY ?? randomBytes(16).toString('hex');
  let cluster;
  try {
    cluster = await startCluster({
      port,
      nodes: count,
      prefix,
      redis,
      redisCluster,
      apiKey,
      logLevel: process.env.PERIHELION_LOG_LEVEL ?? 'warn',
      host: process.env.HOST ?? '127.0.0.1',
      // The nodes' logs (warnings and errors by default), each line marked with its node.
      onLog: (nodePort, line) => {
        if (line.startsWith('{')) process.stderr.write(`[node :${nodePort}] ${line}\n`);
      },
    });
  } catch (error) {
    await localRedis?.stop();
    throw error;
  }
  const { url } = cluster;
  console.log(`Perihelion cluster: ${cluster.nodes.length} nodes behind a round-robin proxy, no sticky sessions`);
  console.log(`  open:      ${url}/  (the demo; every request goes to the next node in turn)`);
  console.log(`  Bayeux:    ${url}/bayeux`);
  for (const node of cluster.nodes) console.log(`  node:      ${node.url}  (pid ${node.pid}, node id ${node.nodeId})`);
  console.log(`  Redis:     ${redisCluster ? `Redis Cluster ${redis}${localRedis ? ' (started here, stopped with the rest)' : ''}` : redis}, key prefix "${prefix}"`);
  console.log(`  HTTP API:  curl -X POST ${url}/api/publish -H "Authorization: Bearer ${apiKey}" -d '{"channel":"/cluster/news","data":{"text":"hi"}}'`);
  console.log(`             (any node takes it; clients may also publish under /cluster/**)`);
  console.log(`  try:       npx perihelion subscribe '/cluster/**' --url ${url}   (its requests hop between the nodes)`);
  console.log(`  Ctrl-C stops the proxy and every node.`);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping the proxy and the nodes`);
    const counts = cluster.proxy.counts();
    cluster.close().then(
      async () => {
        await localRedis?.stop();
        console.log(`requests per node: ${counts.map((c) => `${c.target} ${c.requests + c.upgrades}`).join(', ')}`);
        process.exit(0);
      },
      (error) => {
        console.error('could not stop cleanly:', error);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // A node that dies by itself is reported; the proxy answers 502 in its turn, the others go on.
  cluster.onExit = (node, how) => {
    if (!stopping) console.error(`node ${node.url} stopped (${how}): its turns get 502, and its clients re-handshake on the other nodes`);
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((error) => {
    console.error(error.message ?? error);
    process.exit(1);
  });
}
