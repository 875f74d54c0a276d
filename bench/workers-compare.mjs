#!/usr/bin/env node
// Perihelion in one process against `perihelion serve --workers N` (the perihelion-workers bench
// server), from one bench invocation that ran both: the measurements side by side (medians over
// the rounds), the ratios workers ÷ one process, and, given the bench's log (its stderr), how the
// workers' CPU split between the primary and each worker.
//
//   npm run bench -- --servers perihelion,perihelion-workers --scenarios fanout --no-pin \
//     --results - --json /tmp/fanout.json 2> /tmp/fanout.log
//   node bench/workers-compare.mjs /tmp/fanout.json /tmp/fanout.log
import { readFileSync } from 'node:fs';
import { fmt, mb, median, ratio, table } from './format.mjs';

const [jsonPath, logPath] = process.argv.slice(2);
if (!jsonPath) {
  console.error('usage: node bench/workers-compare.mjs BENCH.json [BENCH-stderr.log]');
  process.exit(2);
}
const { results } = JSON.parse(readFileSync(jsonPath, 'utf8'));
const ONE = 'perihelion';
const MANY = 'perihelion-workers';
const METRICS = ['offeredPerSec', 'deliveredPerSec', 'lossPct', 'p50', 'p99', 'serverCpuPct', 'serverUsPerMsg', 'serverRss', 'genCpuPct', 'othersCpu0Pct', 'othersCpu1Pct', 'serverWaitMs'];

/** Medians over the rounds, per scenario, server and rate. */
const rows = [];
for (const key of new Set(results.map((r) => `${r.scenario}|${r.server}|${r.rate}`))) {
  const [scenario, server, rate] = key.split('|');
  const runs = results.filter((r) => r.scenario === scenario && r.server === server && r.rate === Number(rate));
  const row = { scenario, server, rate: Number(rate), rounds: runs.length };
  for (const metric of METRICS) row[metric] = median(runs.map((r) => r[metric]));
  rows.push(row);
}
const order = (a, b) => a.scenario.localeCompare(b.scenario) || (a.server === b.server ? 0 : a.server === ONE ? -1 : 1) || a.rate - b.rate;
rows.sort(order);
const label = (server) => (server === ONE ? '1 process' : 'workers');

const out = [];
out.push(
  table(
    ['scenario', 'server', 'rate msg/s', 'offered/s', 'delivered/s', 'loss %', 'p50 ms', 'p99 ms', 'server CPU %', 'server µs/msg', 'server RSS MB', 'gen CPU %', 'others CPU0/CPU1 %', 'server CPU wait ms'],
    rows.map((r) => [r.scenario, label(r.server), fmt(r.rate, 0), fmt(r.offeredPerSec, 0), fmt(r.deliveredPerSec, 0), fmt(r.lossPct, 2), fmt(r.p50, 2), fmt(r.p99, 2), fmt(r.serverCpuPct, 0), fmt(r.serverUsPerMsg, 2), mb(r.serverRss), fmt(r.genCpuPct, 0), `${fmt(r.othersCpu0Pct, 0)} / ${fmt(r.othersCpu1Pct, 0)}`, fmt(r.serverWaitMs, 0)]),
    ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  ),
  '',
);

const ratios = [];
for (const many of rows.filter((r) => r.server === MANY)) {
  const one = rows.find((r) => r.server === ONE && r.scenario === many.scenario && r.rate === many.rate);
  if (!one) continue;
  ratios.push([many.scenario, fmt(many.rate, 0), ratio(many.deliveredPerSec, one.deliveredPerSec), ratio(many.serverUsPerMsg, one.serverUsPerMsg), ratio(many.p50, one.p50), ratio(many.p99, one.p99), ratio(many.serverCpuPct, one.serverCpuPct), ratio(many.serverRss, one.serverRss)]);
}
if (ratios.length > 0) {
  out.push('Workers ÷ one process:', '', table(['scenario', 'rate msg/s', 'delivered/s', 'server µs/msg', 'p50', 'p99', 'server CPU', 'server RSS'], ratios, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r']), '');
}

// The workers server logs, at each reading, the CPU since the previous one per process. A run
// takes two readings after its "msg/s ×" line: before (covering the pause since the last run) and
// after; the second covers the run. The server's lines and the bench's own reach the log through
// different pipes, so the run's "delivered" line may come before or after it.
if (logPath) {
  const split = new Map(); // scenario|rate → [{process: µs per delivery}]
  let scenario = null;
  let run = null; // { key, readings, reading, delivered }
  const record = () => {
    if (!run?.reading || !run.delivered) return;
    const parts = {};
    for (const p of run.reading.matchAll(/(primary|w\d+)(?:-\d+)? ([\d,]+) ms/g)) parts[p[1]] = (1000 * Number(p[2].replace(/,/g, ''))) / run.delivered;
    if (!split.has(run.key)) split.set(run.key, []);
    split.get(run.key).push(parts);
    run = null;
  };
  for (const line of readFileSync(logPath, 'utf8').split('\n')) {
    let m;
    if ((m = new RegExp(`^${MANY} · (\\w+): starting`).exec(line))) {
      scenario = m[1];
      run = null;
    } else if ((m = new RegExp(`^${MANY}: ([\\d.]+) msg/s ×`).exec(line))) {
      run = { key: `${scenario}|${Number(m[1])}`, readings: 0, reading: null, delivered: 0 };
    } else if (run && line.includes(`[${MANY}] CPU over the last`)) {
      if (++run.readings === 2) run.reading = line;
      record();
    } else if (run && (m = new RegExp(`^${MANY}:   delivered ([\\d,]+)/`).exec(line))) {
      run.delivered = Number(m[1].replace(/,/g, ''));
      record();
    }
  }
  if (split.size > 0) {
    // Worker names change when a worker is replaced: columns are the primary and w1, w2, … as logged.
    const names = [...new Set([...split.values()].flatMap((runs) => runs.flatMap((p) => Object.keys(p))))].sort((a, b) => (a === 'primary' ? -1 : b === 'primary' ? 1 : Number(a.slice(1)) - Number(b.slice(1))));
    const body = [...split].map(([key, runs]) => {
      const [s, r] = key.split('|');
      return [s, fmt(Number(r), 0), ...names.map((n) => fmt(median(runs.map((p) => p[n])), 2))];
    });
    out.push('Server µs per delivery by process (medians over the rounds; each worker delivers its own subscribers\' share):', '', table(['scenario', 'rate msg/s', ...names], body, ['l', 'r', ...names.map(() => 'r')]), '');
  }
}
process.stdout.write(out.join('\n'));
