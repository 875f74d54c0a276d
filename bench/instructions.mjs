#!/usr/bin/env node
// Instructions per delivery: the server's own work, counted rather than timed. The machine this
// bench runs on is shared and noisy; CPU time per delivery moves by more between runs than the gap
// between Perihelion and the Node floor that #21's goal 1 is about. Valgrind's callgrind counts the
// instructions a process executes (and simulates its caches), the same for the same work whatever
// else the machine is doing.
//
//   node bench/instructions.mjs [--servers perihelion,floor] [--scenario fanout] [--subscribers 1000]
//                               [--rates 1,3] [--duration 20] [--warmup 100] [--keep DIR]
//
// Each server runs the bench's scenario (bench/run.mjs) under callgrind, one rate after the other.
// In each rate's publishing window the counts are zeroed a second in and written out two seconds
// before its end. What one window counts beyond the other, divided by the deliveries it adds (the
// socket writes it adds, counted by callgrind too), is the cost of one more delivery: the work
// that does not grow with deliveries (timers, the connects that come back every `timeout`, the
// bench's own publisher) cancels out. Threads are counted apart: the main thread (the event loop)
// and the rest (V8's compiler and GC helpers).
//
// Under callgrind a server runs some 30-50 times slower: keep the rates low (the default 1 and 3
// messages/s to 1 000 subscribers), warm up long (V8 optimises late at that speed), and check
// that msgs/frame stays 1.00: a server that falls behind batches, and a batch costs otherwise.
// The kernel's part (system calls, the TCP stack) is not counted; it is the same for every server
// that writes once per delivery (see RESULTS.md).
//
// Needs valgrind (`apt-get install -y valgrind`) and a build (`npm run build`). Takes about three
// minutes per server.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = fileURLToPath(new URL('.', import.meta.url));

function usage(message) {
  if (message) console.error(`instructions: ${message}`);
  console.error('usage: node bench/instructions.mjs [--servers a,b] [--scenario name] [--subscribers N] [--rates r1,r2] [--duration S] [--warmup S] [--keep DIR]');
  process.exit(2);
}

const options = { servers: ['perihelion', 'floor'], scenario: 'fanout', subscribers: 1000, rates: [1, 3], duration: 20, warmup: 100, keep: null };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const flag = args[i];
  const value = args[++i];
  if (flag === '--help') usage();
  if (value === undefined) usage(`${flag} needs a value`);
  const positive = () => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) usage(`${flag} takes a positive integer, not ${value}`);
    return n;
  };
  switch (flag) {
    case '--servers':
      options.servers = value.split(',').filter(Boolean);
      break;
    case '--scenario':
      options.scenario = value;
      break;
    case '--subscribers':
      options.subscribers = positive();
      break;
    case '--rates':
      options.rates = value.split(',').map((rate) => {
        const n = Number(rate);
        if (!Number.isSafeInteger(n) || n < 1) usage(`--rates takes positive integers, not ${rate}`);
        return n;
      });
      if (options.rates.length !== 2 || options.rates[0] >= options.rates[1]) usage('--rates takes two rates, the lower first');
      break;
    case '--duration':
      options.duration = positive();
      if (options.duration < 5) usage('--duration is at least 5 s (the window is the duration less 3 s)');
      break;
    case '--warmup':
      options.warmup = positive();
      break;
    case '--keep':
      options.keep = value;
      break;
    default:
      usage(`unknown option ${flag}`);
  }
}
if (options.servers.length === 0) usage('--servers needs at least one server');
if (spawnSync('valgrind', ['--version']).status !== 0) usage('valgrind is not installed (apt-get install -y valgrind)');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const windowSeconds = options.duration - 3;

/** Runs one server's scenario under callgrind; returns the dump files of each rate's window. */
async function countServer(server, dir) {
  const wrap = ['valgrind', '--tool=callgrind', '--cache-sim=yes', '--LL=33554432,16,64', '--smc-check=all-non-file', '--separate-threads=yes', `--callgrind-out-file=${dir}/${server}.%p`];
  const json = join(dir, `${server}.json`);
  const child = spawn(
    process.execPath,
    [`${HERE}run.mjs`, '--scenarios', options.scenario, '--servers', server, '--subscribers', String(options.subscribers), '--rates', options.rates.join(','), '--duration', String(options.duration), '--warmup', String(options.warmup), '--drain', '20', '--no-pin', '--connect-timeout', '120', '--deadline', '3600', '--results', '-', '--json', json],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, BENCH_SERVER_WRAP: wrap.join(' '), BENCH_READY_MS: '300000' } },
  );
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const tail = []; // the last lines of its log, for an error
  let partial = '';
  const seen = new Set();
  const windows = [];
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop();
    for (const line of lines) {
      if (line.includes('==') || !line.trim()) continue; // valgrind's own
      process.stderr.write(`  ${line}\n`);
      tail.push(line);
      if (tail.length > 10) tail.shift();
      const match = /^(\S+): (\d+) msg\/s × \d+ s/.exec(line);
      if (match && match[1] === server && !seen.has(match[2])) {
        seen.add(match[2]);
        const window = countWindow(server, Number(match[2]));
        // A window that cannot be counted ends the run (the error is thrown below).
        window.catch(() => child.kill('SIGTERM'));
        windows.push(window);
      }
    }
  });
  const code = await exited;
  const dumps = await Promise.all(windows);
  if (code !== 0) throw new Error(`${server}: bench/run.mjs exited with ${code}\n${tail.join('\n')}`);
  // One server per run: every row is its.
  const { results } = JSON.parse(readFileSync(json, 'utf8'));
  return { dumps, results };
}

/** Zeroes the counts a second into a rate's window and writes them out `windowSeconds` later. */
async function countWindow(server, rate) {
  await sleep(1000);
  const pid = callgrindPid(server);
  control(['-z', pid]);
  await sleep(windowSeconds * 1000);
  control(['-d', pid]);
  return rate;
}

/** The process of the server under callgrind (callgrind_control finds processes by pid or program name, which is node's). */
function callgrindPid(server) {
  const script = `servers/${server}.mjs`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let command;
    try {
      command = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    if (command.some((arg) => arg.includes('callgrind')) && command.some((arg) => arg.endsWith(script))) return entry;
  }
  throw new Error(`${server}: no process running ${script} under callgrind`);
}

function control(args) {
  const result = spawnSync('callgrind_control', args, { encoding: 'utf8' });
  // It says what failed on stdout and exits with 0.
  if (result.status !== 0 || /error/i.test(result.stdout + result.stderr)) throw new Error(`callgrind_control ${args.join(' ')}: ${result.stderr || result.stdout}`);
}

/** The totals of every thread's file of dump `part`: [main thread, other threads], each {Ir, D1mr, D1mw}. */
function totalsOf(dir, server, part) {
  const files = readdirSync(dir).filter((name) => new RegExp(`^${server}\\.\\d+\\.${part}-\\d+$`).test(name));
  if (files.length === 0) throw new Error(`${server}: no callgrind dump ${part} in ${dir}`);
  const main = { Ir: 0, D1mr: 0, D1mw: 0 };
  const rest = { Ir: 0, D1mr: 0, D1mw: 0 };
  for (const name of files) {
    const text = readFileSync(join(dir, name), 'utf8');
    const events = /^events: (.*)$/m.exec(text)?.[1].split(' ');
    const totals = /^(?:totals|summary): (.*)$/m.exec(text)?.[1].split(' ').map(Number);
    if (!events || !totals) throw new Error(`${name}: no events or totals line`);
    const into = name.endsWith('-01') ? main : rest;
    for (const key of Object.keys(into)) into[key] += totals[events.indexOf(key)] ?? 0;
  }
  return [main, rest];
}

/**
 * The socket writes in dump `part` of the main thread: calls of node's StreamBase::WriteBuffer, one
 * per frame written. A window holds one publication more or less than its rate says (where its
 * edges fall in the publisher's ticks): counted, the deliveries it adds are exact.
 */
function writesOf(dir, server, part) {
  const name = readdirSync(dir).find((file) => new RegExp(`^${server}\\.\\d+\\.${part}-01$`).test(file));
  if (!name) throw new Error(`${server}: no callgrind dump ${part} of the main thread in ${dir}`);
  const names = new Map();
  const calls = new Map();
  let callee = null;
  for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) {
    const fn = /^(c?)fn=\((\d+)\)(?: (.*))?$/.exec(line);
    if (fn) {
      if (fn[3] !== undefined) names.set(fn[2], fn[3]);
      callee = fn[1] === 'c' ? fn[2] : null;
      continue;
    }
    if (callee !== null && line.startsWith('calls=')) calls.set(callee, (calls.get(callee) ?? 0) + Number(line.slice(6).split(' ')[0]));
    callee = null;
  }
  let writes = 0;
  for (const [id, count] of calls) if (names.get(id)?.startsWith('node::StreamBase::WriteBuffer(')) writes += count;
  return writes;
}

const dir = options.keep ?? mkdtempSync(join(tmpdir(), 'perihelion-instructions-'));
// valgrind writes nowhere, silently, into a folder that is not there.
mkdirSync(dir, { recursive: true });
const rows = [];
for (const server of options.servers) {
  console.error(`${server}: ${options.scenario}, ${options.subscribers} subscribers, ${options.rates.join(' then ')} msg/s, under callgrind (${options.warmup} s of warm-up)…`);
  const { dumps, results } = await countServer(server, dir);
  if (dumps.length !== 2) throw new Error(`${server}: ${dumps.length} windows counted, not 2`);
  const [low, high] = [1, 2].map((part) => totalsOf(dir, server, part));
  const writes = [1, 2].map((part) => writesOf(dir, server, part));
  const added = writes[1] - writes[0];
  // The deliveries each rate offers per second, as the scenario addresses them (all subscribers
  // in a fan-out, one in the many-channels scenario).
  const offered = options.rates.map((rate) => results.find((row) => row.rate === rate)?.offeredPerSec ?? Number.NaN);
  const scheduled = Math.round((offered[1] - offered[0]) * windowSeconds);
  if (added <= 0) throw new Error(`${server}: the second window wrote no more than the first (${writes.join(', ')} writes)`);
  const per = (thread, key) => (high[thread][key] - low[thread][key]) / added;
  const frames = options.rates.map((rate) => results.find((row) => row.rate === rate)?.perFrame);
  rows.push({ server, main: per(0, 'Ir'), rest: per(1, 'Ir'), d1r: per(0, 'D1mr'), d1w: per(0, 'D1mw'), frames, writes, scheduled });
}
if (!options.keep) rmSync(dir, { recursive: true, force: true });

const fixed = (n, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : '–');
console.log(`\nOne more delivery (${options.scenario}, ${options.subscribers} subscribers, ${options.rates[0]} → ${options.rates[1]} msg/s, a window of ${windowSeconds} s each):\n`);
console.log('| server | instructions, main thread | instructions, other threads | D1 read misses | D1 write misses | socket writes in the windows | deliveries added (scheduled) | msgs/frame |');
console.log('| :-- | --: | --: | --: | --: | --: | --: | :-- |');
for (const row of rows) {
  console.log(`| ${row.server} | ${fixed(row.main)} | ${fixed(row.rest)} | ${fixed(row.d1r, 1)} | ${fixed(row.d1w, 1)} | ${row.writes.join(' / ')} | ${row.writes[1] - row.writes[0]} (${row.scheduled}) | ${row.frames.map((f) => fixed(f, 2)).join(' / ')} |`);
}
if (rows.length > 1) {
  console.log('');
  for (const row of rows.slice(1)) console.log(`${rows[0].server} ÷ ${row.server}: main thread ${fixed(rows[0].main / row.main, 2)}×, D1 misses ${fixed((rows[0].d1r + rows[0].d1w) / (row.d1r + row.d1w), 2)}×`);
}
if (rows.some((row) => row.frames.some((f) => f !== undefined && f > 1.05))) console.log('\nA server batched (msgs/frame above 1): it fell behind under callgrind; lower the rates or the subscribers.');
