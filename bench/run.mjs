#!/usr/bin/env node
// The benchmark: Perihelion, Faye and Socket.IO side by side in one invocation, scenario after
// scenario (bench/scenarios.mjs): idle connections, fan-out, many channels, long-polling, chat.
// Each server runs alone in a child process pinned to CPU 0; this load generator runs on CPU 1.
//
//   npm run bench -- --scenarios fanout --subscribers 500 --rates 20,50 --duration 5
//
// This file is the run from start to end: options (options.mjs), pinning (pinning.mjs), every
// scenario on every server for every round (measure-load.mjs, measure-idle.mjs), then the report
// (report.mjs). The server processes are in server-process.mjs and cluster.mjs.
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { useWsLibrary } from './clients.mjs';
import { log } from './log.mjs';
import { benchIdle } from './measure-idle.mjs';
import { benchLoad } from './measure-load.mjs';
import { LABELS, parseArgs, scenarioOf } from './options.mjs';
import { cpuCount, pinToCpu1 } from './pinning.mjs';
import { printReport } from './report.mjs';
import { sitsOut } from './scenarios.mjs';
import { killAllServers } from './server-process.mjs';

const options = parseArgs(process.argv.slice(2));
useWsLibrary(options.wsClient === 'ws');
// Unless it is already pinned, this process re-runs itself on CPU 1 here and goes no further.
const pinning = await pinToCpu1({ pin: options.pin, script: fileURLToPath(import.meta.url) });

// ---------------------------------------------------------------------------------------------
// Server children are always killed, however the bench ends.

process.on('exit', killAllServers);
for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
]) {
  process.on(signal, () => {
    log(`bench: ${signal}, stopping`);
    killAllServers();
    process.exit(code);
  });
}
process.on('uncaughtException', (error) => {
  log(`bench: ${error.stack ?? error}`);
  killAllServers();
  process.exit(1);
});

/** This invocation: its settings, and the measurements the scenarios add and the report reads. */
const bench = {
  options,
  pinning,
  cpuCount,
  deadlineAt: Date.now() + options.deadline * 1000,
  startedAt: new Date(),
  loadBefore: os.loadavg(),
  results: [], // load rows: {scenario, server, round, rate, ...}
  idleRows: [], // idle rows: {server, round, size, ...}
  serverNotes: [], // per scenario, server and round: {scenario, name, round, idleRss, connectedRss, peakRss, connected, clients, setupSeconds, error}
};

// A run past its deadline still reports what it measured.
const deadline = setTimeout(() => {
  log(`bench: DEADLINE of ${options.deadline} s exceeded, stopping; partial results follow`);
  killAllServers();
  printReport(bench, { partial: true });
  process.exit(1);
}, options.deadline * 1000);
deadline.unref();

// ---------------------------------------------------------------------------------------------
// Every round runs every scenario on every server; the server order rotates from round to round,
// so that no server always runs first (or last) on a machine whose load drifts.

log(`bench: scenarios ${options.scenarios.join(', ')}; servers ${options.servers.join(', ')}; ${options.rounds} round(s)`);
log(`bench: ${pinning === 'none' ? 'unpinned' : pinning}; deadline ${options.deadline} s`);
rounds: for (let round = 1; round <= options.rounds; round++) {
  const k = options.servers.length;
  const order = options.servers.map((_, i) => options.servers[(i + round - 1) % k]);
  if (options.rounds > 1) log(`\nbench: round ${round} of ${options.rounds}: ${order.join(', ')}`);
  for (const id of options.scenarios) {
    const scenario = scenarioOf(options, id);
    for (const name of order) {
      if (Date.now() > bench.deadlineAt) break rounds;
      const why = sitsOut(scenario, name);
      if (why !== null) {
        if (round === 1) log(`\nbench: ${scenario.id} skips ${LABELS[name]}: ${why}`);
        continue;
      }
      if (scenario.kind === 'idle') for (const size of scenario.sizes) await benchIdle(bench, name, scenario, size, round);
      else await benchLoad(bench, name, scenario, round);
    }
  }
}
clearTimeout(deadline);
printReport(bench);
killAllServers();
const failed = bench.serverNotes.some((n) => n.error) || bench.idleRows.some((r) => r.error);
process.exit((bench.results.length > 0 || bench.idleRows.length > 0) && !failed ? 0 : 1);
