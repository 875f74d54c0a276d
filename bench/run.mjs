#!/usr/bin/env node
// The benchmark: Perihelion, Faye and Socket.IO side by side in one invocation, scenario after
// scenario (bench/scenarios.mjs): idle connections, fan-out, many channels, long-polling, chat.
// Each server runs alone in a child process pinned to CPU 0; this load generator runs on CPU 1.
//
//   npm run bench -- --scenarios fanout --subscribers 500 --rates 20,50 --duration 5
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Recorder, useWsLibrary, bayeuxLongPollSubscriber, bayeuxSubscriber, closeClient, nchanSubscriber, nowMs, socketIoOfficialSubscriber, socketIoPollingSubscriber, socketIoRawSubscriber } from './clients.mjs';
import { DEFAULT_SCENARIOS, SCENARIOS, expectedDeliveries } from './scenarios.mjs';
import { nchanInstalled } from './servers/nchan-install.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

/** Every server the bench can run, by its --servers name. */
const LABELS = { perihelion: 'Perihelion', faye: 'Faye 1.4', socketio: 'Socket.IO 4', nchan: 'Nchan 1.3', floor: 'Node floor' };

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: npm run bench -- [options]

  --scenarios LIST       any of ${Object.keys(SCENARIOS).join(',')} (default all)
  --subscribers N        subscribers per server in every load scenario (default: the scenario's)
  --rates A,B,C          publish rates to step through, messages/s (default: the scenario's)
  --idle-sizes A,B,C     connection counts of the idle scenario (default 1000,5000,19000)
  --duration S           seconds of publishing per rate (default 5)
  --settle S             idle scenario: seconds to wait after the last connection before memory is measured (default 12)
  --drain S              longest wait for stragglers after the last publish, s (default 5)
  --warmup S             load scenarios: seconds of publishing at the first rate before anything is measured (default 3; 0 for none)
  --servers LIST         any of perihelion,faye,socketio,nchan,floor (default all, in that order; nchan only when
                         installed: apt-get install nginx-light libnginx-mod-nchan). floor is not a peer but a
                         reference: a bare ws server, the least any Node server spends (see bench/README.md)
  --socketio-client K    raw (Engine.IO protocol over a WebSocket, default) or official (socket.io-client)
  --ws-client K          the subscribers' WebSocket: raw (a minimal RFC 6455 client on a TCP socket, default) or ws
  --connect-timeout S    per-client setup timeout, s (default 15)
  --concurrency K        clients being set up at once (default 50)
  --rounds R             repeat the whole sequence R times, server order rotated; the table shows medians (default 1)
  --deadline S           the whole run's deadline, s (default 1800 per round: a full round takes about 17 minutes)
  --results FILE         where to write the Markdown report (default bench/RESULTS.md; "-" for none)
  --json FILE            also write every measurement as JSON (for scripts such as the CI guard)
  --redis URL            the Redis of the cluster scenario (default redis://127.0.0.1:6379)
  --no-pin               do not pin with taskset
  --cpu-prof DIR         write a V8 CPU profile of each server to DIR (open it in Chrome DevTools)
`;

function parseArgs(argv) {
  const options = {
    scenarios: DEFAULT_SCENARIOS,
    subscribers: null,
    rates: null,
    idleSizes: null,
    json: null,
    redis: 'redis://127.0.0.1:6379',
    duration: 5,
    drain: 5,
    warmup: 3,
    settle: 12,
    servers: nchanInstalled() ? ['perihelion', 'faye', 'socketio', 'nchan', 'floor'] : ['perihelion', 'faye', 'socketio', 'floor'],
    socketioClient: 'raw',
    wsClient: 'raw',
    connectTimeout: 15,
    concurrency: 50,
    rounds: 1,
    deadline: null,
    results: 'bench/RESULTS.md',
    pin: true,
    cpuProf: null,
  };
  const number = (name, value, { min = 0, integer = false } = {}) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) usage(`--${name} needs a number ≥ ${min}, got ${JSON.stringify(value)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--scenarios': {
        const list = value().split(',').filter(Boolean);
        for (const name of list) if (!SCENARIOS[name]) usage(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(SCENARIOS).join(', ')}`);
        if (list.length === 0) usage('--scenarios needs at least one scenario');
        options.scenarios = list;
        break;
      }
      case '--idle-sizes':
        options.idleSizes = value()
          .split(',')
          .filter(Boolean)
          .map((n) => number('idle-sizes', n, { min: 1, integer: true }));
        break;
      case '--json':
        options.json = value();
        break;
      case '--redis':
        options.redis = value();
        break;
      case '--subscribers':
        options.subscribers = number('subscribers', value(), { min: 1, integer: true });
        break;
      case '--rates':
        options.rates = value()
          .split(',')
          .filter(Boolean)
          .map((r) => number('rates', r, { min: 0.1 }));
        if (options.rates.length === 0) usage('--rates needs at least one rate');
        break;
      case '--cpu-prof':
        options.cpuProf = value();
        break;
      case '--duration':
        options.duration = number('duration', value(), { min: 0.5 });
        break;
      case '--settle':
        options.settle = number('settle', value(), { min: 0 });
        break;
      case '--drain':
        options.drain = number('drain', value(), { min: 0 });
        break;
      case '--warmup':
        options.warmup = number('warmup', value(), { min: 0 });
        break;
      case '--servers': {
        const list = value().split(',').filter(Boolean);
        for (const s of list) if (!Object.hasOwn(LABELS, s)) usage(`unknown server ${JSON.stringify(s)}`);
        if (list.includes('nchan') && !nchanInstalled()) usage('nchan is not installed: apt-get install nginx-light libnginx-mod-nchan');
        if (list.length === 0) usage('--servers needs at least one server');
        options.servers = list;
        break;
      }
      case '--socketio-client': {
        const kind = value();
        if (kind !== 'raw' && kind !== 'official') usage('--socketio-client is raw or official');
        options.socketioClient = kind;
        break;
      }
      case '--ws-client': {
        const kind = value();
        if (kind !== 'raw' && kind !== 'ws') usage('--ws-client is raw or ws');
        options.wsClient = kind;
        break;
      }
      case '--connect-timeout':
        options.connectTimeout = number('connect-timeout', value(), { min: 1 });
        break;
      case '--concurrency':
        options.concurrency = number('concurrency', value(), { min: 1, integer: true });
        break;
      case '--rounds':
        options.rounds = number('rounds', value(), { min: 1, integer: true });
        break;
      case '--deadline':
        options.deadline = number('deadline', value(), { min: 10 });
        break;
      case '--results':
        options.results = value();
        break;
      case '--no-pin':
        options.pin = false;
        break;
      case '-h':
      case '--help':
        process.stdout.write(USAGE);
        process.exit(0);
      default:
        usage(`unknown option ${JSON.stringify(arg)}`);
    }
  }
  options.deadline ??= 1800 * options.rounds;
  return options;
}

function usage(problem) {
  process.stderr.write(`bench: ${problem}\n\n${USAGE}`);
  process.exit(2);
}

const options = parseArgs(process.argv.slice(2));
useWsLibrary(options.wsClient === 'ws');
const log = (line) => process.stderr.write(`${line}\n`);

// ---------------------------------------------------------------------------------------------
// CPU pinning: servers on CPU 0, this process on CPU 1.

function allowedCpus() {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

// CPUs of the machine as `nproc` counts them before pinning (the pinned re-run inherits the count).
const cpuCount = Number(process.env.PERIHELION_BENCH_NPROC) || (os.availableParallelism?.() ?? os.cpus().length);
const hasTaskset = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' }).status === 0;
let pinning = 'none';
if (!options.pin) {
  log('bench: --no-pin: servers and load generator are not pinned');
} else if (process.env.PERIHELION_BENCH_PINNED === '1' && allowedCpus() === '1') {
  pinning = 'taskset: servers on CPU 0, load generator on CPU 1';
} else if (!hasTaskset) {
  log('bench: WARNING: taskset not found (util-linux); running unpinned, server and load generator compete for CPUs');
} else if (cpuCount < 2) {
  log(`bench: WARNING: ${cpuCount} CPU available; running unpinned, server and load generator share it`);
} else {
  // Re-run this script on CPU 1 and stand by until it finishes.
  const child = spawn('taskset', ['-c', '1', process.execPath, ...process.execArgv, SELF, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, PERIHELION_BENCH_PINNED: '1', PERIHELION_BENCH_NPROC: String(cpuCount) },
  });
  const forward = (signal) => () => child.kill(signal);
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  process.on('SIGHUP', forward('SIGHUP'));
  child.on('error', (error) => {
    log(`bench: could not start taskset: ${error.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => process.exit(code ?? (signal === 'SIGINT' ? 130 : 1)));
  await new Promise(() => {});
}

// ---------------------------------------------------------------------------------------------
// Children: started, tracked, and always killed.

const children = new Set();

function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  children.clear();
}

process.on('exit', killAll);
for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
]) {
  process.on(signal, () => {
    log(`bench: ${signal}, stopping`);
    killAll();
    process.exit(code);
  });
}
process.on('uncaughtException', (error) => {
  log(`bench: ${error.stack ?? error}`);
  killAll();
  process.exit(1);
});

const deadlineAt = Date.now() + options.deadline * 1000;
const deadline = setTimeout(() => {
  log(`bench: DEADLINE of ${options.deadline} s exceeded, stopping; partial results follow`);
  killAll();
  printReport({ partial: true });
  process.exit(1);
}, options.deadline * 1000);
deadline.unref();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the first value of check() that is truthy, polling; rejects after ms. */
async function waitFor(check, ms, what) {
  const until = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

class ServerProcess {
  constructor(name, transport = 'websocket', env = {}) {
    this.name = name;
    this.exited = null;
    this.inbox = [];
    this.waiters = [];
    const script = `${HERE}servers/${name}.mjs`;
    // --expose-gc: memory is measured after a full collection (live data, not garbage), for every server alike.
    const node = [process.execPath, '--expose-gc', ...(options.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', options.cpuProf] : []), script];
    const [command, args] = pinning !== 'none' ? ['taskset', ['-c', '0', ...node]] : [node[0], node.slice(1)];
    this.child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: { ...process.env, BENCH_TRANSPORT: transport, ...env } });
    children.add(this.child);
    const relay = (stream) => {
      let buffer = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buffer += chunk;
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          log(`  [${name}] ${buffer.slice(0, nl)}`);
          buffer = buffer.slice(nl + 1);
        }
      });
    };
    relay(this.child.stdout);
    relay(this.child.stderr);
    this.child.on('message', (message) => {
      if (message.type === 'ready' && Array.isArray(message.pids)) this.serverPids = message.pids;
      const i = this.waiters.findIndex((w) => w.type === message.type);
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(message);
      else if (message.type === 'error') log(`  [${name}] error: ${message.message}`);
      else this.inbox.push(message);
    });
    this.child.on('exit', (code, signal) => {
      children.delete(this.child);
      this.exited = { code, signal };
      for (const w of this.waiters.splice(0)) w.reject(new Error(`${name} server exited (code ${code}, signal ${signal})`));
    });
    this.child.on('error', (error) => {
      for (const w of this.waiters.splice(0)) w.reject(error);
    });
  }

  /** The next message of this type (an 'error' message fails the wait). */
  next(type, ms) {
    const queued = this.inbox.findIndex((m) => m.type === type);
    if (queued >= 0) return Promise.resolve(this.inbox.splice(queued, 1)[0]);
    if (this.exited) return Promise.reject(new Error(`${this.name} server exited (code ${this.exited.code}, signal ${this.exited.signal})`));
    return new Promise((resolve, reject) => {
      const waiter = { type, resolve, reject };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`${this.name} server: no '${type}' within ${ms} ms`));
      }, ms);
      waiter.resolve = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      waiter.reject = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      this.waiters.push(waiter);
    });
  }

  send(message) {
    if (this.child.connected) this.child.send(message);
  }

  async request(message, replyType, ms = 30_000) {
    const reply = this.next(replyType, ms);
    this.send(message);
    return reply;
  }

  /** The processes doing the server's work: this child, or those its 'ready' names (Nchan's nginx worker). */
  get pids() {
    return this.serverPids ?? [this.child.pid];
  }

  async stop() {
    if (this.exited) return;
    const gone = new Promise((resolve) => this.child.once('exit', resolve));
    this.send({ type: 'close' });
    await Promise.race([gone, sleep(3000)]);
    if (!this.exited) {
      this.child.kill('SIGKILL');
      await Promise.race([gone, sleep(1000)]);
    }
  }
}

/**
 * The cluster scenario's servers: `size` processes of one server sharing one Redis, each pinned to
 * CPU 0 like a single server. It answers like one ServerProcess: the publisher runs on the first
 * node; stats add up CPU and memory of all of them.
 */
class ServerGroup {
  constructor(name, transport, size, redisUrl, prefix) {
    this.name = name;
    this.nodes = Array.from({ length: size }, () => new ServerProcess(name, transport, { BENCH_REDIS_URL: redisUrl, BENCH_REDIS_PREFIX: prefix }));
  }

  get pids() {
    return this.nodes.map((node) => node.child.pid);
  }

  async next(type, ms) {
    const replies = await Promise.all(this.nodes.map((node) => node.next(type, ms)));
    return { ...replies[0], ports: replies.map((r) => r.port), rss: replies.reduce((sum, r) => sum + r.rss, 0) };
  }

  async request(message, replyType, ms) {
    if (message.type !== 'stats') return this.nodes[0].request(message, replyType, ms);
    const all = await Promise.all(this.nodes.map((node) => node.request(message, replyType, ms)));
    const sum = (read) => all.reduce((total, stats) => total + read(stats), 0);
    return { ...all[0], cpu: { user: sum((s) => s.cpu.user), system: sum((s) => s.cpu.system) }, rss: sum((s) => s.rss), rssPeak: sum((s) => s.rssPeak), heapUsed: sum((s) => s.heapUsed) };
  }

  async stop() {
    await Promise.all(this.nodes.map((node) => node.stop()));
  }
}

/** Removes the keys a cluster run left in Redis under its prefix. */
async function cleanRedis(url, prefix) {
  const { Redis } = await import('ioredis');
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } catch (error) {
    log(`bench: could not clean Redis keys ${prefix}*: ${error.message}`);
  } finally {
    redis.disconnect();
  }
}

const runQueueWait = (pids) => pids.reduce((sum, pid) => sum + runQueueWaitMs(pid), 0);

// ---------------------------------------------------------------------------------------------
// Other load on the machine: busy time per CPU (/proc/stat) and how long the server's main thread
// waited for a CPU (/proc/<pid>/schedstat). Both are Linux-only; elsewhere they read as unknown.

const TICK_MS = 10; // USER_HZ is 100 on Linux

function cpuBusyMs() {
  try {
    const busy = {};
    for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
      const m = /^cpu(\d+)\s+(.*)$/.exec(line);
      if (!m) continue;
      const [user, nice, system, , , , , steal] = m[2].split(/\s+/).map(Number);
      busy[m[1]] = (user + nice + system + (steal || 0)) * TICK_MS; // irq and softirq left out: loopback traffic of the run itself lands there
    }
    return busy;
  } catch {
    return null;
  }
}

function runQueueWaitMs(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e6;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------------------------
// One server: start, connect N subscribers, probe, step through the rates.

// The floor is in the ratios too: Perihelion ÷ floor is what Perihelion adds to what Node costs.
const PEERS = ['faye', 'socketio', 'nchan', 'floor'];
const results = []; // load rows: {scenario, server, round, rate, ...}
const idleRows = []; // idle rows: {server, round, size, ...}
const serverNotes = []; // per scenario, server and round: {scenario, name, round, idleRss, connectedRss, peakRss, connected, clients, setupSeconds, error}

/** The scenario with the command line's overrides applied. */
function scenarioOf(id) {
  const base = SCENARIOS[id];
  if (base.kind === 'idle') return { id, ...base, sizes: options.idleSizes ?? base.sizes };
  const clients = options.subscribers ?? base.clients;
  const title = clients === base.clients ? base.title : `${base.title} — run with ${clients} clients (--subscribers)`;
  return { id, ...base, title, clients, rates: options.rates ?? base.rates };
}

function subscriberFactory(name, port, path, scenario) {
  const base = `127.0.0.1:${port}`;
  const polling = scenario.transport === 'long-polling';
  if (name === 'socketio') {
    if (polling) return (common, i) => socketIoPollingSubscriber({ ...common, url: `http://${base}/socket.io/?EIO=4&transport=polling`, rooms: scenario.channelsOf(i), event: 'fanout' });
    return options.socketioClient === 'official'
      ? (common, i) => socketIoOfficialSubscriber({ ...common, url: `ws://${base}`, rooms: scenario.channelsOf(i), event: 'fanout' })
      : (common, i) => socketIoRawSubscriber({ ...common, url: `ws://${base}/socket.io/?EIO=4&transport=websocket`, rooms: scenario.channelsOf(i), event: 'fanout' });
  }
  // The floor speaks Nchan's subscriber protocol: the open WebSocket is the subscription.
  if (name === 'nchan' || name === 'floor') return (common, i) => nchanSubscriber({ ...common, url: `ws://${base}${path}`, channels: scenario.channelsOf(i) });
  const channels = (i) => scenario.channelsOf(i).map((key) => `/bench/${key}`);
  if (polling) return (common, i) => bayeuxLongPollSubscriber({ ...common, url: `http://${base}${path}`, channels: channels(i) });
  return (common, i) => bayeuxSubscriber({ ...common, url: `ws://${base}${path}`, channels: channels(i) });
}

/**
 * Has the server publish `rate` messages/s for `duration` s, then waits (at most --drain s) until
 * the recorder has every delivery those messages owe the subscribers.
 */
async function publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration }) {
  const published = await server.request({ type: 'run', runId, rate, duration, keys: scenario.keys, batch: scenario.batch }, 'published', duration * 1000 + 60_000);
  const expected = expectedDeliveries(scenario, subscribers, published.count);
  const drainUntil = Date.now() + options.drain * 1000;
  while (recorder.count < expected && Date.now() < drainUntil) await sleep(20);
  return { published, expected };
}

/** Sets up n clients, `concurrency` at a time; each client remembers its index (its channels). */
async function connectAll(name, factory, recorder, n, concurrency) {
  const clients = [];
  const errors = new Map();
  let started = 0;
  let done = 0;
  const step = Math.max(1, Math.round(n / 5));
  const t0 = Date.now();
  log(`${name}: connecting ${n} clients (${concurrency} at a time, ${options.connectTimeout} s each)…`);
  const worker = async () => {
    while (started < n) {
      const index = started++;
      try {
        const client = await factory({ recorder, timeoutMs: options.connectTimeout * 1000 }, index);
        client.index = index;
        clients.push(client);
      } catch (error) {
        const key = String(error?.message ?? error);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
      done++;
      if (done % step === 0 || done === n) log(`${name}:   ${done}/${n} set up (${clients.length} subscribed, ${done - clients.length} failed) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return { clients, errors, seconds: (Date.now() - t0) / 1000 };
}

/** Subscribers per channel key among the clients still alive. */
function subscribersByKey(scenario, clients) {
  const counts = new Map();
  for (const client of clients) {
    if (client.failed) continue;
    for (const key of scenario.channelsOf(client.index)) counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

async function benchLoad(name, scenario, round) {
  const note = { scenario: scenario.id, name, round, clients: scenario.clients };
  serverNotes.push(note);
  log(`\n${name} · ${scenario.id}: starting server${pinning !== 'none' ? ' on CPU 0' : ''}`);
  const prefix = `perihelion-bench-${process.pid}-${name}-${round}:`;
  const server = scenario.cluster ? new ServerGroup(name, scenario.transport, scenario.cluster, options.redis, prefix) : new ServerProcess(name, scenario.transport);
  const recorder = new Recorder();
  let clients = [];
  try {
    const ready = await server.next('ready', 20_000);
    note.idleRss = ready.rss;
    const ports = ready.ports ?? [ready.port];
    log(`${name}: listening on 127.0.0.1:${ports.join(', ')}${ready.path} (pid ${server.pids.join(', ')})`);

    // In a cluster, client i connects to node i mod the number of nodes.
    const factories = ports.map((port) => subscriberFactory(name, port, ready.path, scenario));
    const setup = await connectAll(name, (common, i) => factories[i % factories.length](common, i), recorder, scenario.clients, options.concurrency);
    clients = setup.clients;
    note.connected = clients.length;
    note.setupSeconds = setup.seconds;
    if (setup.errors.size > 0) {
      note.setupErrors = [...setup.errors].map(([message, count]) => `${count}× ${message}`);
      log(`${name}: ${scenario.clients - clients.length} of ${scenario.clients} clients failed: ${note.setupErrors.join('; ')}`);
    }
    if (clients.length === 0) throw new Error('no client could be set up');
    await sleep(500);
    note.connectedRss = (await server.request({ type: 'stats' }, 'stats')).rss;

    // A probe message on every channel: every client must see one before the runs start.
    const probeId = `probe-${Date.now()}`;
    recorder.startProbe(probeId);
    await server.request({ type: 'probe', id: probeId, keys: scenario.keys }, 'probed');
    try {
      await waitFor(() => recorder.probeCount >= clients.length, 15_000, 'the probe to reach every client');
    } catch {
      log(`${name}: WARNING: the probe reached ${recorder.probeCount} of ${clients.length} clients`);
    }
    note.probeReached = recorder.probeCount;

    // Not measured: JIT compilation and the collections that follow a burst of connections belong
    // to no steady state. Every server gets the same warm-up.
    if (options.warmup > 0) {
      const rate = scenario.rates[0];
      const live = clients.filter((c) => !c.failed);
      log(`${name}: warming up at ${rate} msg/s for ${options.warmup} s (not measured)…`);
      const subscribers = subscribersByKey(scenario, live);
      const runId = `${name}-warmup-${Date.now()}`;
      recorder.startRun(runId, expectedDeliveries(scenario, subscribers, Math.round(rate * options.warmup)));
      await publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration: options.warmup });
    }

    for (const rate of scenario.rates) {
      if (Date.now() > deadlineAt) break;
      await sleep(1000);
      const live = clients.filter((c) => !c.failed);
      const subscribers = subscribersByKey(scenario, live);
      const runId = `${name}-${rate}-${Date.now()}`;
      const planned = Math.round(rate * options.duration);
      recorder.startRun(runId, expectedDeliveries(scenario, subscribers, planned));
      const errorsBefore = recorder.errors;
      const offeredPerSec = expectedDeliveries(scenario, subscribers, planned) / options.duration;
      log(`${name}: ${rate} msg/s × ${options.duration} s to ${live.length} clients (${fmt(offeredPerSec, 0)} deliveries/s offered)…`);
      const before = await server.request({ type: 'stats' }, 'stats');
      const busyBefore = cpuBusyMs();
      const waitBefore = runQueueWait(server.pids);
      const genBefore = process.cpuUsage();
      const genT0 = nowMs();
      const { published, expected } = await publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration: options.duration });
      const genCpu = process.cpuUsage(genBefore);
      const genWall = nowMs() - genT0;
      const busyAfter = cpuBusyMs();
      const waitAfter = runQueueWait(server.pids);
      const after = await server.request({ type: 'stats' }, 'stats');

      const received = recorder.count + recorder.overflow;
      const latencies = recorder.latencies.subarray(0, recorder.count).slice().sort();
      const span = Math.max(options.duration * 1000, (recorder.lastAt || published.endedAt) - published.startedAt);
      const serverCpuUs = after.cpu.user + after.cpu.system - (before.cpu.user + before.cpu.system);
      const wallMs = after.at - before.at;
      const serverCpuMs = serverCpuUs / 1000;
      const genCpuMs = (genCpu.user + genCpu.system) / 1000;
      const others = (cpu, ownMs) => (busyBefore && busyAfter && busyAfter[cpu] !== undefined ? Math.max(0, (100 * (busyAfter[cpu] - busyBefore[cpu] - ownMs)) / wallMs) : NaN);
      const row = {
        scenario: scenario.id,
        server: name,
        round,
        rate,
        subscribers: live.length,
        published: published.count,
        publishErrors: published.errors,
        publishError: published.lastError,
        publishSeconds: (published.endedAt - published.startedAt) / 1000,
        expected,
        received,
        lost: Math.max(0, expected - received),
        lossPct: expected > 0 ? (100 * Math.max(0, expected - received)) / expected : 0,
        outOfOrder: recorder.outOfOrder,
        perFrame: recorder.frames > 0 ? recorder.count / recorder.frames : NaN,
        clientErrors: recorder.errors - errorsBefore,
        clientError: recorder.errors > errorsBefore ? recorder.lastError : null,
        offeredPerSec,
        deliveredPerSec: received / (span / 1000),
        p50: percentile(latencies, 50),
        p99: percentile(latencies, 99),
        max: latencies.length ? latencies[latencies.length - 1] : NaN,
        serverCpuPct: (100 * serverCpuUs) / ((after.at - before.at) * 1000),
        serverUsPerMsg: received > 0 ? serverCpuUs / received : NaN,
        serverRss: after.rss,
        serverRssPeak: after.rssPeak,
        genCpuPct: (100 * genCpuMs) / genWall,
        // With pinning, CPU 0 runs only the server and CPU 1 only this generator: the rest is other load.
        othersCpu0Pct: pinning !== 'none' ? others('0', serverCpuMs) : NaN,
        othersCpu1Pct: pinning !== 'none' ? others('1', genCpuMs) : NaN,
        serverWaitMs: waitAfter - waitBefore,
        wallMs,
      };
      results.push(row);
      log(
        `${name}:   delivered ${received.toLocaleString('en')}/${expected.toLocaleString('en')} (${fmt(row.lossPct, 2)} % lost), ` +
          `${fmt(row.deliveredPerSec, 0)}/s, p50 ${fmt(row.p50, 1)} ms, p99 ${fmt(row.p99, 1)} ms, max ${fmt(row.max, 1)} ms, ` +
          `server CPU ${fmt(row.serverCpuPct, 0)} % (${fmt(row.serverUsPerMsg, 2)} µs/msg), generator CPU ${fmt(row.genCpuPct, 0)} %, ` +
          `other load CPU 0 ${fmt(row.othersCpu0Pct, 0)} % / CPU 1 ${fmt(row.othersCpu1Pct, 0)} %, server waited ${fmt(row.serverWaitMs, 0)} ms for a CPU`,
      );
      if (row.publishErrors) log(`${name}:   ${row.publishErrors} publishes failed: ${row.publishError}`);
      if (row.clientErrors) log(`${name}:   ${row.clientErrors} clients failed during the run: ${row.clientError}`);
    }
    note.peakRss = (await server.request({ type: 'stats' }, 'stats')).rssPeak;
  } catch (error) {
    note.error = String(error?.message ?? error);
    log(`${name}: FAILED: ${note.error}`);
  } finally {
    for (const client of clients) closeClient(client);
    await server.stop();
    if (scenario.cluster) await cleanRedis(options.redis, prefix);
  }
}

/** Idle: connect `size` subscribers to a fresh server; memory per connection and connect rate. */
async function benchIdle(name, scenario, size, round) {
  const row = { scenario: scenario.id, server: name, round, size };
  idleRows.push(row);
  log(`\n${name} · idle ${size}: starting server${pinning !== 'none' ? ' on CPU 0' : ''}`);
  const server = new ServerProcess(name, scenario.transport);
  const recorder = new Recorder();
  let clients = [];
  try {
    const ready = await server.next('ready', 20_000);
    const before = await server.request({ type: 'stats', gc: true }, 'stats');
    const concurrency = Math.max(options.concurrency, 200);
    const setup = await connectAll(name, subscriberFactory(name, ready.port, ready.path, { ...SCENARIOS.fanout, transport: 'websocket' }), recorder, size, concurrency);
    clients = setup.clients;
    row.connected = clients.length;
    row.setupSeconds = setup.seconds;
    row.connectsPerSec = clients.length / setup.seconds;
    if (setup.errors.size > 0) row.setupErrors = [...setup.errors].map(([message, count]) => `${count}× ${message}`);
    // The CPU of the set-up alone: read before anything else runs, without a forced collection
    // (the settle below forces several, which are the benchmark's doing, not the server's).
    const connected = await server.request({ type: 'stats' }, 'stats');
    // Idle means settled: right after a burst of connections V8 still holds the young generation
    // it grew for the burst, and its memory reducer gives it back only after about 8 s without
    // much allocation. Wait `--settle` s (12 by default), then sample until memory stops falling
    // (two samples 2 s apart within 1 %), at most 12 s more — every server alike.
    const settleMs = options.settle * 1000;
    await sleep(settleMs);
    let after = await server.request({ type: 'stats', gc: true }, 'stats');
    for (let waited = 0; waited < 12_000; waited += 2000) {
      await sleep(2000);
      const sample = await server.request({ type: 'stats', gc: true }, 'stats');
      const settled = sample.rss >= after.rss * 0.99;
      after = sample;
      if (settled) break;
    }
    row.rssBefore = before.rss;
    row.rssAfter = after.rss;
    row.heapBefore = before.heapUsed;
    row.heapAfter = after.heapUsed;
    row.bytesPerConnection = clients.length > 0 ? (after.rss - before.rss) / clients.length : NaN;
    // Null for a server without a JavaScript heap (Nchan).
    row.heapPerConnection = clients.length > 0 && after.heapUsed !== null ? (after.heapUsed - before.heapUsed) / clients.length : NaN;
    row.cpuMs = (connected.cpu.user + connected.cpu.system - before.cpu.user - before.cpu.system) / 1000;
    // The server's own cost of a connection (TCP accept, upgrade, handshake, connect, subscribe),
    // which the load generator's speed does not limit: the rate one core could sustain is 1e6 / µs.
    row.serverUsPerConnection = clients.length > 0 ? (1000 * row.cpuMs) / clients.length : NaN;
    log(`${name}: ${clients.length} idle connections: ${fmt(row.bytesPerConnection / 1024, 1)} KB RSS and ${fmt(row.heapPerConnection / 1024, 1)} KB heap each; ${fmt(row.connectsPerSec, 0)} connections/s`);
  } catch (error) {
    row.error = String(error?.message ?? error);
    log(`${name}: FAILED: ${row.error}`);
  } finally {
    for (const client of clients) closeClient(client);
    await server.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function fmt(value, digits) {
  if (value === undefined || value === null || Number.isNaN(value)) return '–';
  return value.toLocaleString('en', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
const mb = (bytes) => (bytes ? fmt(bytes / 1048576, 0) : '–');

function ratio(a, b) {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '–';
  const r = a / b;
  return `${r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)}×`;
}

function median(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function table(headers, rows, align) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => `| ${cells.map((c, i) => (align[i] === 'l' ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ')} |`;
  const rule = `| ${widths.map((w, i) => (align[i] === 'l' ? `:${'-'.repeat(w - 1)}` : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/** The version of an installed Debian package, or '?'. */
function debianVersionOf(pkg) {
  const out = spawnSync('dpkg-query', ['-W', '-f=${Version}', pkg], { encoding: 'utf8' });
  return out.status === 0 && out.stdout ? out.stdout.trim() : '?';
}

function versionOf(pkg) {
  try {
    return JSON.parse(readFileSync(`${ROOT}node_modules/${pkg}/package.json`, 'utf8')).version;
  } catch {
    return '?';
  }
}


const METRICS = ['offeredPerSec', 'deliveredPerSec', 'lossPct', 'perFrame', 'p50', 'p99', 'max', 'serverCpuPct', 'serverUsPerMsg', 'serverRss', 'genCpuPct', 'othersCpu0Pct', 'othersCpu1Pct', 'serverWaitMs'];
const IDLE_METRICS = ['connected', 'connectsPerSec', 'serverUsPerConnection', 'bytesPerConnection', 'heapPerConnection', 'rssAfter'];

const loadScenarios = () => options.scenarios.map(scenarioOf).filter((s) => s.kind === 'load');

/** One row per scenario, server and rate: the median of each metric over the rounds. */
function summaryRows(scenario) {
  const rows = [];
  for (const server of options.servers) {
    for (const rate of scenario.rates) {
      const runs = results.filter((r) => r.scenario === scenario.id && r.server === server && r.rate === rate);
      if (runs.length === 0) continue;
      const row = { scenario: scenario.id, server, rate, rounds: runs.length };
      for (const metric of METRICS) row[metric] = median(runs.map((r) => r[metric]));
      rows.push(row);
    }
  }
  return rows;
}

function idleSummary() {
  const rows = [];
  for (const size of scenarioOf('idle').sizes) {
    for (const server of options.servers) {
      const runs = idleRows.filter((r) => r.server === server && r.size === size);
      if (runs.length === 0) continue;
      const row = { server, size, error: runs.find((r) => r.error)?.error };
      for (const metric of IDLE_METRICS) row[metric] = median(runs.map((r) => r[metric]));
      rows.push(row);
    }
  }
  return rows;
}

function resultsTable(rows, { withRound = false } = {}) {
  const headers = ['server', ...(withRound ? ['round'] : []), 'rate msg/s', 'offered/s', 'delivered/s', 'loss %', 'msgs/frame', 'p50 ms', 'p99 ms', 'max ms', 'server CPU %', 'server µs/msg', 'server RSS MB', 'gen CPU %', 'others CPU0 %', 'others CPU1 %', 'server CPU wait ms'];
  const body = rows.map((r) => [
    LABELS[r.server],
    ...(withRound ? [String(r.round)] : []),
    fmt(r.rate, 0),
    fmt(r.offeredPerSec, 0),
    fmt(r.deliveredPerSec, 0),
    fmt(r.lossPct, 2),
    fmt(r.perFrame, 2),
    fmt(r.p50, 2),
    fmt(r.p99, 2),
    fmt(r.max, 1),
    fmt(r.serverCpuPct, 0),
    fmt(r.serverUsPerMsg, 2),
    mb(r.serverRss),
    fmt(r.genCpuPct, 0),
    fmt(r.othersCpu0Pct, 0),
    fmt(r.othersCpu1Pct, 0),
    fmt(r.serverWaitMs, 0),
  ]);
  return table(headers, body, headers.map((_, i) => (i === 0 ? 'l' : 'r')));
}

function idleTable(rows) {
  const body = rows.map((r) => [
    LABELS[r.server],
    fmt(r.size, 0),
    fmt(r.connected, 0),
    fmt(r.connectsPerSec, 0),
    fmt(r.serverUsPerConnection, 0),
    fmt(1e6 / r.serverUsPerConnection, 0),
    fmt(r.bytesPerConnection / 1024, 1),
    fmt(r.heapPerConnection / 1024, 1),
    mb(r.rssAfter),
    r.error ? `FAILED: ${r.error}` : 'ok',
  ]);
  return table(['server', 'connections', 'connected', 'connections/s', 'server µs/conn', 'conn/s one core could take', 'KB RSS per conn', 'KB heap per conn', 'server RSS MB', 'status'], body, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l']);
}

/** Perihelion ÷ each other server, per scenario and rate (or size). */
function ratiosTable() {
  const out = [];
  for (const scenario of loadScenarios()) {
    const rows = summaryRows(scenario);
    for (const rate of scenario.rates) {
      const p = rows.find((r) => r.server === 'perihelion' && r.rate === rate);
      if (!p) continue;
      for (const other of PEERS) {
        const o = rows.find((r) => r.server === other && r.rate === rate);
        if (!o) continue;
        out.push([scenario.id, `Perihelion / ${LABELS[other]}`, fmt(rate, 0), ratio(p.deliveredPerSec, o.deliveredPerSec), ratio(p.p50, o.p50), ratio(p.p99, o.p99), ratio(p.serverUsPerMsg, o.serverUsPerMsg), ratio(p.serverRss, o.serverRss)]);
      }
    }
  }
  const idle = idleSummary();
  for (const p of idle.filter((r) => r.server === 'perihelion')) {
    for (const other of PEERS) {
      const o = idle.find((r) => r.server === other && r.size === p.size);
      if (!o) continue;
      out.push([`idle ${p.size}`, `Perihelion / ${LABELS[other]}`, '–', `${ratio(p.connectsPerSec, o.connectsPerSec)} conn/s`, '–', '–', `${ratio(p.serverUsPerConnection, o.serverUsPerConnection)} per conn`, `${ratio(p.bytesPerConnection, o.bytesPerConnection)} per conn`]);
    }
  }
  if (out.length === 0) return null;
  return table(['scenario', 'ratio', 'rate msg/s', 'delivered/s', 'p50', 'p99', 'server µs/msg', 'server RSS'], out, ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r']);
}

function memoryTable(scenario) {
  const rows = serverNotes
    .filter((n) => n.scenario === scenario.id)
    .map((n) => [
      LABELS[n.name],
      String(n.round),
      mb(n.idleRss),
      mb(n.connectedRss),
      mb(n.peakRss),
      `${n.connected ?? 0}/${n.clients}`,
      n.setupSeconds ? fmt(n.setupSeconds, 1) : '–',
      n.error ? `FAILED: ${n.error}` : (n.setupErrors ?? []).join('; ') || 'ok',
    ]);
  return table(['server', 'round', 'RSS idle MB', 'RSS with clients MB', 'RSS peak MB', 'subscribed', 'setup s', 'status'], rows, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'l']);
}

function problems() {
  const out = [];
  const roundOf = (r) => (options.rounds > 1 ? ` (round ${r.round})` : '');
  for (const r of results) {
    const label = `${r.scenario}: ${LABELS[r.server]} at ${r.rate} msg/s${roundOf(r)}`;
    if (r.lost > 0) out.push(`${label}: ${r.lost.toLocaleString('en')} of ${r.expected.toLocaleString('en')} deliveries missing after the ${options.drain} s drain`);
    if (r.outOfOrder > 0) out.push(`${label}: ${r.outOfOrder} deliveries duplicated or out of order`);
    if (r.publishErrors > 0) out.push(`${label}: ${r.publishErrors} publishes failed (${r.publishError})`);
    if (r.clientErrors > 0) out.push(`${label}: ${r.clientErrors} clients failed (${r.clientError})`);
    if (r.publishSeconds > options.duration * 1.1 + 0.2) out.push(`${label}: publishing took ${fmt(r.publishSeconds, 2)} s instead of ${options.duration} s (the server's event loop fell behind)`);
    if (r.deliveredPerSec < 0.97 * r.offeredPerSec) out.push(`${label}: delivered ${fmt(r.deliveredPerSec, 0)}/s of ${fmt(r.offeredPerSec, 0)}/s offered (deliveries trailed past the publishing window)`);
    if (r.genCpuPct >= 75) out.push(`${label}: the load generator used ${fmt(r.genCpuPct, 0)} % of its CPU, near its limit; latencies there include some client-side queueing`);
    if (r.serverCpuPct >= 90) out.push(`${label}: the server was saturated (${fmt(r.serverCpuPct, 0)} % CPU)`);
    if (r.othersCpu0Pct >= 10 || r.othersCpu1Pct >= 10 || r.serverWaitMs >= 0.1 * r.wallMs) {
      out.push(`${label}: other processes used ${fmt(r.othersCpu0Pct, 0)} % of CPU 0 and ${fmt(r.othersCpu1Pct, 0)} % of CPU 1; the server waited ${fmt(r.serverWaitMs, 0)} ms for a CPU`);
    }
  }
  for (const n of serverNotes) {
    const label = `${n.scenario}: ${LABELS[n.name]}${options.rounds > 1 ? ` (round ${n.round})` : ''}`;
    if (n.error) out.push(`${label}: ${n.error}`);
    if (n.setupErrors) out.push(`${label}: client setup errors: ${n.setupErrors.join('; ')}`);
    if (n.connected && n.probeReached !== undefined && n.probeReached < n.connected) out.push(`${label}: the probe reached ${n.probeReached} of ${n.connected} clients`);
  }
  for (const r of idleRows) {
    const label = `idle ${r.size}: ${LABELS[r.server]}${options.rounds > 1 ? ` (round ${r.round})` : ''}`;
    if (r.error) out.push(`${label}: ${r.error}`);
    if (r.setupErrors) out.push(`${label}: connection errors: ${r.setupErrors.join('; ')}`);
  }
  return out;
}

function commandLine() {
  const args = process.argv.slice(2).map((a) => (/^[\w,.=/-]+$/.test(a) ? a : JSON.stringify(a)));
  if (process.env.npm_lifecycle_event === 'bench') return `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`;
  return `node bench/run.mjs${args.length ? ` ${args.join(' ')}` : ''}`;
}

const startedAt = new Date();
const loadBefore = os.loadavg();

function setupText() {
  const cpuModel = os.cpus()[0]?.model?.trim() ?? 'unknown';
  return [
    `- Date: ${startedAt.toISOString()}`,
    `- Command: \`${commandLine()}\``,
    `- Machine: ${cpuCount} CPUs (\`nproc\`), ${cpuModel}, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB, ${os.type()} ${os.release()}, Node ${process.version}; load average at start ${loadBefore.map((l) => l.toFixed(2)).join(' ')}`,
    `- Pinning: ${pinning === 'none' ? 'none (see warnings)' : pinning}`,
    `- Scenarios: ${options.scenarios.join(', ')}; ${options.warmup > 0 ? `${options.warmup} s warm-up at the first rate (not measured), ` : ''}${options.duration} s per rate, up to ${options.drain} s drain, publisher inside the server process, ${options.rounds} round${options.rounds > 1 ? 's (server order rotated; tables show medians)' : ''}`,
    `- Versions: Perihelion ${versionOf('@perihelion/server')}, faye ${versionOf('faye')}, socket.io ${versionOf('socket.io')}${options.servers.includes('nchan') ? `, Nchan ${debianVersionOf('libnginx-mod-nchan')} on nginx ${debianVersionOf('nginx-light')} (Debian)` : ''}, ws ${versionOf('ws')} (load generator)`,
    `- Perihelion: \`createServer({ open: true, handshakeRate: 0, maxSessionsPerIp: 0, publishRate: 0, pingInterval: 0 })\`, in-memory engine — limits off so they do not interfere (other options at their defaults: \`maxQueue\` 1000, history of 1000 messages per channel, positions on every message)`,
    `- Faye: \`new faye.NodeAdapter({ mount: '/faye', timeout: 25 })\` on node:http, published with \`bayeux.getClient().publish\``,
    ...(options.servers.includes('nchan')
      ? [
          "- Nchan: nginx with one worker, `nchan_subscriber websocket` at `/sub?id=<channels, comma-separated>` (`nchan_subscriber_first_message newest`), `nchan_publisher` at `/pub?id=<channel>`; published by HTTP POSTs pipelined on one keep-alive socket (in order) from a wrapper process on the server's CPU (not counted). Server CPU and RSS are the nginx worker's; its subscribers send nothing (the open WebSocket is the subscription), so its set-up is lighter than a Bayeux handshake, connect and subscribe",
        ]
      : []),
    ...(options.servers.includes('floor')
      ? [
          "- Node floor (a reference, not a peer): a bare `ws` server (`noServer`, no compression, no client tracking) on node:http; Nchan's subscribers (the open WebSocket to `/sub?id=<channels>` is the subscription); a publish builds one frame and writes it to the TCP socket of every subscriber. No protocol, sessions, queues, history or limits: what any Node server on `ws` spends at least",
        ]
      : []),
    `- Socket.IO: \`new Server(http, { transports: [<the scenario's>] })\`, a room per channel, published with \`io.to(room).emit\`; clients ${options.socketioClient === 'official' ? "are socket.io-client instances with `transports: ['websocket']`" : 'speak the raw Engine.IO 4 / Socket.IO protocol over `ws` or HTTP polling (not socket.io-client), like the Bayeux clients'}`,
    '- Servers run with `--expose-gc`; idle memory is measured after a full collection.',
  ].join('\n');
}

function printReport({ partial = false } = {}) {
  const issues = problems();
  const medians = options.rounds > 1 ? `, medians of ${options.rounds} rounds` : '';
  const sections = [];
  const mdSections = [];
  if (idleRows.length > 0) {
    const text = idleTable(idleSummary());
    sections.push(`Idle: ${SCENARIOS.idle.title}${medians}`, '', text, '');
    mdSections.push(`## idle: ${SCENARIOS.idle.title}${medians}`, '', text, '');
  }
  for (const scenario of loadScenarios()) {
    const rows = summaryRows(scenario);
    if (rows.length === 0) continue;
    sections.push(`${scenario.id}: ${scenario.title}${medians}`, '', resultsTable(rows), '');
    mdSections.push(`## ${scenario.id}: ${scenario.title}${medians}`, '', resultsTable(rows), '');
    if (options.rounds > 1) mdSections.push('Every round:', '', resultsTable(results.filter((r) => r.scenario === scenario.id), { withRound: true }), '');
    mdSections.push('Setup and memory:', '', memoryTable(scenario), '');
  }
  const ratios = ratiosTable();
  const out = [
    '',
    `Perihelion limits off for the benchmark: open: true, handshakeRate: 0, maxSessionsPerIp: 0, publishRate: 0, pingInterval: 0${partial ? ' (PARTIAL: deadline exceeded)' : ''}`,
    `Socket.IO clients: ${options.socketioClient === 'official' ? 'socket.io-client' : 'raw Engine.IO/Socket.IO protocol'}; ${pinning === 'none' ? 'unpinned' : pinning}`,
    '',
    ...sections,
    ratios ? `Ratios, Perihelion ÷ other (delivered/s and connections/s: >1 is better; latency, CPU per message, memory: <1 is better)\n\n${ratios}` : 'No ratios (a server is missing).',
    '',
    issues.length ? `Problems seen:\n${issues.map((i) => `- ${i}`).join('\n')}` : 'Problems seen: none (no loss, no errors, no notable other load).',
    '',
  ].join('\n');
  process.stdout.write(out);

  if (options.json) {
    const path = options.json.startsWith('/') ? options.json : `${ROOT}${options.json}`;
    writeFileSync(path, JSON.stringify({ startedAt, pinning, options, results, idle: idleRows, notes: serverNotes, problems: issues }, null, 2));
    log(`bench: wrote ${path}`);
  }
  if (options.results === '-') return;
  const md = [
    '# Benchmark results',
    '',
    ...(partial ? ['**PARTIAL: the run exceeded its deadline.**', ''] : []),
    '> The machine is shared and noisy (other people build and test on it at the same time): absolute',
    '> numbers move from run to run, and the ratios between servers measured in the same invocation',
    '> matter more than any single figure. The "others" columns show how much of each CPU other',
    '> processes took during each run.',
    '',
    setupText(),
    '',
    '## How to read the tables',
    '',
    '- delivered/s: deliveries received by all clients divided by the publishing window, or by the time',
    '  until the last one arrived when that is longer; offered/s: deliveries the schedule asks for (each',
    "  message times its channel's subscribers); loss: expected minus received after the drain;",
    '  msgs/frame: benchmark messages per WebSocket frame or poll response received (batching).',
    '- latency: receive time at the client minus the timestamp in the payload (same monotonic clock).',
    "- server CPU: the server child's `process.cpuUsage()` over the run (publishing and drain) as a share of",
    '  one CPU, and per delivered message; RSS: at the end of the run.',
    "- gen CPU: the load generator's own CPU (near 100 % would mean the generator, not the server, limits).",
    '- others CPU0 / CPU1: busy time of that CPU (`/proc/stat`) not spent by the server (CPU 0) or the',
    "  generator (CPU 1); server CPU wait: time the server's main thread was runnable but waiting for a CPU",
    '  (`/proc/<pid>/schedstat`). High values mean other load distorted that run.',
    `- idle: RSS and heap growth of the server divided by the connections, measured idle: after a full GC, ${options.settle} s or more after the last`,
    `  connection, once memory stopped falling (at most ${options.settle + 12} s); connections/s:`,
    '  subscribers set up (WebSocket open, handshake, subscribe) per second, 200 at a time (the load',
    "  generator's own speed limits it); server µs/conn: the server's CPU from the first connection to",
    '  the last one subscribed, per connection (the forced collections of the memory measurement are',
    '  not counted), and the connections per second one core could take at that cost.',
    '',
    ...mdSections,
    '## Ratios',
    '',
    'Perihelion ÷ the other server in the same scenario and rate. delivered/s and connections/s: above 1 is',
    'better; latency, CPU per message, RSS and memory per connection: below 1 is better.',
    '',
    ratios ?? 'No ratios (a server is missing).',
    '',
    '## Problems seen',
    '',
    issues.length ? issues.map((i) => `- ${i}`).join('\n') : 'None: no loss, no errors, no notable other load.',
    '',
  ];
  const path = options.results.startsWith('/') ? options.results : `${ROOT}${options.results}`;
  writeFileSync(path, md.join('\n'));
  log(`bench: wrote ${path}`);
}

// ---------------------------------------------------------------------------------------------

log(`bench: scenarios ${options.scenarios.join(', ')}; servers ${options.servers.join(', ')}; ${options.rounds} round(s)`);
log(`bench: ${pinning === 'none' ? 'unpinned' : pinning}; deadline ${options.deadline} s`);
rounds: for (let round = 1; round <= options.rounds; round++) {
  const k = options.servers.length;
  const order = options.servers.map((_, i) => options.servers[(i + round - 1) % k]);
  if (options.rounds > 1) log(`\nbench: round ${round} of ${options.rounds}: ${order.join(', ')}`);
  for (const id of options.scenarios) {
    const scenario = scenarioOf(id);
    for (const name of order) {
      if (Date.now() > deadlineAt) break rounds;
      if (scenario.servers && !scenario.servers.includes(name)) {
        if (round === 1) log(`\nbench: ${scenario.id} skips ${LABELS[name]}: ${scenario.skips[name] ?? 'not supported'}`);
        continue;
      }
      if (scenario.kind === 'idle') for (const size of scenario.sizes) await benchIdle(name, scenario, size, round);
      else await benchLoad(name, scenario, round);
    }
  }
}
clearTimeout(deadline);
printReport();
killAll();
const failed = serverNotes.some((n) => n.error) || idleRows.some((r) => r.error);
process.exit((results.length > 0 || idleRows.length > 0) && !failed ? 0 : 1);
