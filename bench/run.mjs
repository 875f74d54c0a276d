#!/usr/bin/env node
// Fan-out benchmark: N WebSocket subscribers on one channel, a publisher inside the server process
// publishing M messages/s for D seconds, against Perihelion, Faye and Socket.IO in turn.
// Each server runs alone in a child process pinned to CPU 0; this load generator runs on CPU 1.
//
//   npm run bench -- --subscribers 500 --rates 20,50 --duration 5
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Recorder, bayeuxSubscriber, closeClient, nowMs, socketIoOfficialSubscriber, socketIoRawSubscriber } from './clients.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: npm run bench -- [options]

  --subscribers N        subscribers per server (default 1000)
  --rates A,B,C          publish rates to step through, messages/s (default 20,50,100)
  --duration S           seconds of publishing per rate (default 5)
  --drain S              longest wait for stragglers after the last publish, s (default 5)
  --servers LIST         any of perihelion,faye,socketio (default all three, in that order)
  --socketio-client K    raw (Engine.IO protocol over ws, default) or official (socket.io-client)
  --connect-timeout S    per-client setup timeout, s (default 15)
  --concurrency K        clients being set up at once (default 50)
  --rounds R             repeat the whole sequence R times, server order rotated; the table shows medians (default 1)
  --deadline S           the whole run's deadline, s (default 900)
  --results FILE         where to write the Markdown report (default bench/RESULTS.md; "-" for none)
  --no-pin               do not pin with taskset
  --cpu-prof DIR         write a V8 CPU profile of each server to DIR (open it in Chrome DevTools)
`;

function parseArgs(argv) {
  const options = {
    subscribers: 1000,
    rates: [20, 50, 100],
    duration: 5,
    drain: 5,
    servers: ['perihelion', 'faye', 'socketio'],
    socketioClient: 'raw',
    connectTimeout: 15,
    concurrency: 50,
    rounds: 1,
    deadline: 900,
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
      case '--drain':
        options.drain = number('drain', value(), { min: 0 });
        break;
      case '--servers': {
        const list = value().split(',').filter(Boolean);
        for (const s of list) if (!['perihelion', 'faye', 'socketio'].includes(s)) usage(`unknown server ${JSON.stringify(s)}`);
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
  return options;
}

function usage(problem) {
  process.stderr.write(`bench: ${problem}\n\n${USAGE}`);
  process.exit(2);
}

const options = parseArgs(process.argv.slice(2));
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
  constructor(name) {
    this.name = name;
    this.exited = null;
    this.inbox = [];
    this.waiters = [];
    const script = `${HERE}servers/${name}.mjs`;
    const node = [process.execPath, ...(options.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', options.cpuProf] : []), script];
    const [command, args] = pinning !== 'none' ? ['taskset', ['-c', '0', ...node]] : [node[0], node.slice(1)];
    this.child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
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

const LABELS = { perihelion: 'Perihelion', faye: 'Faye 1.4', socketio: 'Socket.IO 4' };
const results = []; // rows: {server, rate, ...}
const serverNotes = {}; // per server: {idleRss, connectedRss, peakRss, connected, setupSeconds, error}

function subscriberFactory(name, port, path) {
  const base = `ws://127.0.0.1:${port}`;
  if (name === 'socketio') {
    return options.socketioClient === 'official'
      ? (common) => socketIoOfficialSubscriber({ ...common, url: base, room: 'bench', event: 'fanout' })
      : (common) => socketIoRawSubscriber({ ...common, url: `${base}/socket.io/?EIO=4&transport=websocket`, room: 'bench', event: 'fanout' });
  }
  return (common) => bayeuxSubscriber({ ...common, url: `${base}${path}`, channel: '/bench/fanout' });
}

async function connectAll(name, factory, recorder) {
  const n = options.subscribers;
  const clients = [];
  const errors = new Map();
  let started = 0;
  let done = 0;
  const step = Math.max(1, Math.round(n / 5));
  const t0 = Date.now();
  log(`${name}: connecting ${n} subscribers (${options.concurrency} at a time, ${options.connectTimeout} s each)…`);
  const worker = async () => {
    while (started < n) {
      started++;
      try {
        clients.push(await factory({ recorder, timeoutMs: options.connectTimeout * 1000 }));
      } catch (error) {
        const key = String(error?.message ?? error);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
      done++;
      if (done % step === 0 || done === n) log(`${name}:   ${done}/${n} set up (${clients.length} subscribed, ${done - clients.length} failed) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, n) }, worker));
  return { clients, errors, seconds: (Date.now() - t0) / 1000 };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

async function benchServer(name, round) {
  const note = { name, round };
  (serverNotes[name] ??= []).push(note);
  log(`\n${name}: starting server${pinning !== 'none' ? ' on CPU 0' : ''}`);
  const server = new ServerProcess(name);
  const recorder = new Recorder();
  let clients = [];
  try {
    const ready = await server.next('ready', 20_000);
    note.idleRss = ready.rss;
    log(`${name}: listening on 127.0.0.1:${ready.port}${ready.path} (pid ${server.child.pid})`);

    const setup = await connectAll(name, subscriberFactory(name, ready.port, ready.path), recorder);
    clients = setup.clients;
    note.connected = clients.length;
    note.setupSeconds = setup.seconds;
    if (setup.errors.size > 0) {
      note.setupErrors = [...setup.errors].map(([message, count]) => `${count}× ${message}`);
      log(`${name}: ${options.subscribers - clients.length} of ${options.subscribers} subscribers failed: ${note.setupErrors.join('; ')}`);
    }
    if (clients.length === 0) throw new Error('no subscriber could be set up');
    await sleep(500);
    note.connectedRss = (await server.request({ type: 'stats' }, 'stats')).rss;

    // A probe message: every subscriber must see it before the runs start.
    const probeId = `probe-${Date.now()}`;
    recorder.startProbe(probeId);
    await server.request({ type: 'probe', id: probeId }, 'probed');
    try {
      await waitFor(() => recorder.probeCount >= clients.length, 15_000, 'the probe to reach every subscriber');
    } catch {
      log(`${name}: WARNING: the probe reached ${recorder.probeCount} of ${clients.length} subscribers`);
    }
    note.probeReached = recorder.probeCount;

    for (const rate of options.rates) {
      if (Date.now() > deadlineAt) break;
      await sleep(1000);
      const live = clients.filter((c) => !c.failed).length;
      const runId = `${name}-${rate}-${Date.now()}`;
      const planned = Math.round(rate * options.duration);
      recorder.startRun(runId, live * planned);
      const errorsBefore = recorder.errors;
      log(`${name}: ${rate} msg/s × ${options.duration} s to ${live} subscribers (${(live * rate).toLocaleString('en')} deliveries/s offered)…`);
      const before = await server.request({ type: 'stats' }, 'stats');
      const busyBefore = cpuBusyMs();
      const waitBefore = runQueueWaitMs(server.child.pid);
      const genBefore = process.cpuUsage();
      const genT0 = nowMs();
      const published = await server.request({ type: 'run', runId, rate, duration: options.duration }, 'published', options.duration * 1000 + 60_000);
      const expected = live * published.count;
      const drainUntil = Date.now() + options.drain * 1000;
      while (recorder.count < expected && Date.now() < drainUntil) await sleep(20);
      const genCpu = process.cpuUsage(genBefore);
      const genWall = nowMs() - genT0;
      const busyAfter = cpuBusyMs();
      const waitAfter = runQueueWaitMs(server.child.pid);
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
        server: name,
        round,
        rate,
        subscribers: live,
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
        offeredPerSec: live * rate,
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
      if (row.clientErrors) log(`${name}:   ${row.clientErrors} subscribers failed during the run: ${row.clientError}`);
    }
    note.peakRss = (await server.request({ type: 'stats' }, 'stats')).rssPeak;
  } catch (error) {
    note.error = String(error?.message ?? error);
    log(`${name}: FAILED: ${note.error}`);
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

const METRICS = ['offeredPerSec', 'deliveredPerSec', 'lossPct', 'perFrame', 'p50', 'p99', 'max', 'serverCpuPct', 'serverUsPerMsg', 'serverRss', 'genCpuPct', 'othersCpu0Pct', 'othersCpu1Pct', 'serverWaitMs'];

/** One row per server and rate: the median of each metric over the rounds. */
function summaryRows() {
  const rows = [];
  for (const server of options.servers) {
    for (const rate of options.rates) {
      const runs = results.filter((r) => r.server === server && r.rate === rate);
      if (runs.length === 0) continue;
      const row = { server, rate, rounds: runs.length };
      for (const metric of METRICS) row[metric] = median(runs.map((r) => r[metric]));
      rows.push(row);
    }
  }
  return rows;
}

function table(headers, rows, align) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => `| ${cells.map((c, i) => (align[i] === 'l' ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ')} |`;
  const rule = `| ${widths.map((w, i) => (align[i] === 'l' ? `:${'-'.repeat(w - 1)}` : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

function resultsTable(rows, { withRound = false } = {}) {
  const headers = [
    'server',
    ...(withRound ? ['round'] : []),
    'rate msg/s',
    'offered/s',
    'delivered/s',
    'loss %',
    'msgs/frame',
    'p50 ms',
    'p99 ms',
    'max ms',
    'server CPU %',
    'server µs/msg',
    'server RSS MB',
    'gen CPU %',
    'others CPU0 %',
    'others CPU1 %',
    'server CPU wait ms',
  ];
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

function ratiosTable(rows) {
  const out = [];
  for (const rate of options.rates) {
    const p = rows.find((r) => r.server === 'perihelion' && r.rate === rate);
    if (!p) continue;
    for (const other of ['faye', 'socketio']) {
      const o = rows.find((r) => r.server === other && r.rate === rate);
      if (!o) continue;
      out.push([
        `Perihelion / ${LABELS[other]}`,
        fmt(rate, 0),
        ratio(p.deliveredPerSec, o.deliveredPerSec),
        ratio(p.p50, o.p50),
        ratio(p.p99, o.p99),
        ratio(p.serverUsPerMsg, o.serverUsPerMsg),
        ratio(p.serverRss, o.serverRss),
      ]);
    }
  }
  if (out.length === 0) return null;
  return table(['ratio', 'rate msg/s', 'delivered/s', 'p50', 'p99', 'server µs/msg', 'server RSS'], out, ['l', 'r', 'r', 'r', 'r', 'r', 'r']);
}

function memoryTable() {
  const rows = [];
  for (const s of options.servers) {
    for (const n of serverNotes[s] ?? []) {
      rows.push([
        LABELS[s],
        String(n.round),
        mb(n.idleRss),
        mb(n.connectedRss),
        mb(n.peakRss),
        `${n.connected ?? 0}/${options.subscribers}`,
        n.setupSeconds ? fmt(n.setupSeconds, 1) : '–',
        n.error ? `FAILED: ${n.error}` : (n.setupErrors ?? []).join('; ') || 'ok',
      ]);
    }
  }
  return table(['server', 'round', 'RSS idle MB', 'RSS with subscribers MB', 'RSS peak MB', 'subscribed', 'setup s', 'status'], rows, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'l']);
}

function problems() {
  const out = [];
  const roundOf = (r) => (options.rounds > 1 ? ` (round ${r.round})` : '');
  for (const r of results) {
    const label = `${LABELS[r.server]} at ${r.rate} msg/s${roundOf(r)}`;
    if (r.lost > 0) out.push(`${label}: ${r.lost.toLocaleString('en')} of ${r.expected.toLocaleString('en')} deliveries missing after the ${options.drain} s drain`);
    if (r.outOfOrder > 0) out.push(`${label}: ${r.outOfOrder} deliveries duplicated or out of order`);
    if (r.publishErrors > 0) out.push(`${label}: ${r.publishErrors} publishes failed (${r.publishError})`);
    if (r.clientErrors > 0) out.push(`${label}: ${r.clientErrors} subscribers failed (${r.clientError})`);
    if (r.publishSeconds > options.duration * 1.1 + 0.2) out.push(`${label}: publishing ${fmt(r.rate * options.duration, 0)} messages took ${fmt(r.publishSeconds, 2)} s instead of ${options.duration} s (the server's event loop fell behind)`);
    if (r.deliveredPerSec < 0.97 * r.offeredPerSec) out.push(`${label}: delivered ${fmt(r.deliveredPerSec, 0)}/s of ${fmt(r.offeredPerSec, 0)}/s offered (deliveries trailed past the publishing window)`);
    if (r.genCpuPct >= 75) out.push(`${label}: the load generator used ${fmt(r.genCpuPct, 0)} % of its CPU, near its limit; latencies there include some client-side queueing`);
    if (r.serverCpuPct >= 90) out.push(`${label}: the server was saturated (${fmt(r.serverCpuPct, 0)} % CPU)`);
    if (r.othersCpu0Pct >= 10 || r.othersCpu1Pct >= 10 || r.serverWaitMs >= 0.1 * r.wallMs) {
      out.push(`${label}: other processes used ${fmt(r.othersCpu0Pct, 0)} % of CPU 0 and ${fmt(r.othersCpu1Pct, 0)} % of CPU 1; the server waited ${fmt(r.serverWaitMs, 0)} ms for a CPU`);
    }
  }
  for (const s of options.servers) {
    for (const n of serverNotes[s] ?? []) {
      const label = `${LABELS[s]}${options.rounds > 1 ? ` (round ${n.round})` : ''}`;
      if (n.error) out.push(`${label}: ${n.error}`);
      if (n.setupErrors) out.push(`${label}: subscriber setup errors: ${n.setupErrors.join('; ')}`);
      if (n.connected && n.probeReached !== undefined && n.probeReached < n.connected) out.push(`${label}: the probe reached ${n.probeReached} of ${n.connected} subscribers`);
    }
  }
  return out;
}

function versionOf(pkg) {
  try {
    return JSON.parse(readFileSync(`${ROOT}node_modules/${pkg}/package.json`, 'utf8')).version;
  } catch {
    return '?';
  }
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
    `- Scenario: fan-out, ${options.subscribers} WebSocket subscribers on one channel, rates ${options.rates.join(', ')} msg/s, ${options.duration} s each, up to ${options.drain} s drain, publisher inside the server process, ${options.rounds} round${options.rounds > 1 ? 's (server order rotated; tables show medians)' : ''}`,
    `- Versions: Perihelion ${versionOf('@perihelion/server')}, faye ${versionOf('faye')}, socket.io ${versionOf('socket.io')}, ws ${versionOf('ws')} (load generator)`,
    `- Perihelion: \`createServer({ open: true, handshakeRate: 0, maxSessionsPerIp: 0, publishRate: 0, pingInterval: 0 })\`, WebSocket transport, in-memory engine — limits off so they do not interfere (other options at their defaults, including \`maxQueue\` 1000)`,
    `- Faye: \`new faye.NodeAdapter({ mount: '/faye', timeout: 25 })\` on node:http, published with \`bayeux.getClient().publish\``,
    `- Socket.IO: \`new Server(http, { transports: ['websocket'] })\`, one room, published with \`io.to(room).emit\`; subscribers ${options.socketioClient === 'official' ? "are socket.io-client instances with `transports: ['websocket']`" : 'speak the raw Engine.IO 4 / Socket.IO protocol over `ws` (not socket.io-client), like the Bayeux subscribers'}`,
  ].join('\n');
}

function printReport({ partial = false } = {}) {
  const summary = summaryRows();
  const ratios = ratiosTable(summary);
  const issues = problems();
  const medians = options.rounds > 1 ? `, medians of ${options.rounds} rounds` : '';
  const out = [
    '',
    `Fan-out: ${options.subscribers} subscribers, one channel, ${options.duration} s per rate${medians}${partial ? ' (PARTIAL: deadline exceeded)' : ''}`,
    `Perihelion limits off for the benchmark: open: true, handshakeRate: 0, maxSessionsPerIp: 0, publishRate: 0, pingInterval: 0`,
    `Socket.IO subscribers: ${options.socketioClient === 'official' ? 'socket.io-client' : 'raw Engine.IO/Socket.IO protocol over ws'}; ${pinning === 'none' ? 'unpinned' : pinning}`,
    '',
    resultsTable(summary),
    '',
    memoryTable(),
    '',
    ratios ? `Ratios, Perihelion ÷ other (delivered/s: >1 is better; latency, CPU per message, RSS: <1 is better)\n\n${ratios}` : 'No ratios (a server is missing).',
    '',
    issues.length ? `Problems seen:\n${issues.map((i) => `- ${i}`).join('\n')}` : 'Problems seen: none (no loss, no errors, no notable other load).',
    '',
  ].join('\n');
  process.stdout.write(out);

  if (options.results === '-') return;
  const md = [
    '# Benchmark results: fan-out',
    '',
    ...(partial ? ['**PARTIAL: the run exceeded its deadline.**', ''] : []),
    '> The machine is shared and noisy (other people build and test on it at the same time): absolute',
    '> numbers move from run to run, and the ratios between servers measured in the same invocation',
    '> matter more than any single figure. The "others" columns show how much of each CPU other',
    '> processes took during each run.',
    '',
    setupText(),
    '',
    `## Per server and rate${medians}`,
    '',
    '- delivered/s: deliveries received by all subscribers divided by the publishing window, or by the time',
    '  until the last one arrived when that is longer; loss: subscribers × messages published, minus received,',
    '  after the drain; msgs/frame: benchmark messages per WebSocket frame received (batching).',
    '- latency: receive time at the subscriber minus the timestamp in the payload (same monotonic clock).',
    "- server CPU: the server child's `process.cpuUsage()` over the run (publishing and drain) as a share of",
    '  one CPU, and per delivered message; RSS: at the end of the run.',
    "- gen CPU: the load generator's own CPU (near 100 % would mean the generator, not the server, limits).",
    '- others CPU0 / CPU1: busy time of that CPU (`/proc/stat`) not spent by the server (CPU 0) or the',
    "  generator (CPU 1); server CPU wait: time the server's main thread was runnable but waiting for a CPU",
    '  (`/proc/<pid>/schedstat`). High values mean other load distorted that run.',
    '',
    resultsTable(summary),
    '',
    ...(options.rounds > 1 ? ['### Every round', '', resultsTable(results, { withRound: true }), ''] : []),
    '## Memory and setup',
    '',
    memoryTable(),
    '',
    '## Ratios',
    '',
    'Perihelion ÷ the other server at the same rate. delivered/s: above 1 is better; latency, CPU per message',
    'and RSS: below 1 is better.',
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

log(`bench: fan-out, ${options.subscribers} subscribers, rates ${options.rates.join(',')} msg/s, ${options.duration} s each; servers ${options.servers.join(', ')}; ${options.rounds} round(s)`);
log(`bench: ${pinning === 'none' ? 'unpinned' : pinning}; deadline ${options.deadline} s`);
rounds: for (let round = 1; round <= options.rounds; round++) {
  const k = options.servers.length;
  const order = options.servers.map((_, i) => options.servers[(i + round - 1) % k]);
  if (options.rounds > 1) log(`\nbench: round ${round} of ${options.rounds}: ${order.join(', ')}`);
  for (const name of order) {
    if (Date.now() > deadlineAt) break rounds;
    await benchServer(name, round);
  }
}
clearTimeout(deadline);
printReport();
killAll();
process.exit(results.length > 0 && !Object.values(serverNotes).flat().some((n) => n.error) ? 0 : 1);
