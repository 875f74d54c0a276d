// The report: the tables printed on stdout, the Markdown of bench/RESULTS.md (or --results) with
// the setup and how to read the tables, and the JSON of --json. With several rounds, a table shows
// the median of each measurement over the rounds; the ratios compare Perihelion with each other
// server measured in the same invocation, which is what holds on a noisy machine.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { fmt, mb, median, ratio, table } from './format.mjs';
import { log } from './log.mjs';
import { LABELS, scenarioOf } from './options.mjs';
import { SCENARIOS } from './scenarios.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

// The floors are in the ratios too: Perihelion ÷ floor is what Perihelion adds to what Node costs,
// Perihelion ÷ Bayeux floor what it adds to the protocol's own frames at set-up.
const PEERS = ['faye', 'socketio', 'nchan', 'floor', 'floor-bayeux'];

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
const IDLE_METRICS = ['connected', 'connectsPerSec', 'serverUsPerConnection', 'burstBytesPerConnection', 'bytesPerConnection', 'heapPerConnection', 'rssAfter'];

const loadScenarios = (options) => options.scenarios.map((id) => scenarioOf(options, id)).filter((s) => s.kind === 'load');

/** One row per scenario, server and rate: the median of each metric over the rounds. */
function summaryRows({ options, results }, scenario) {
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

function idleSummary({ options, idleRows }) {
  const rows = [];
  for (const size of scenarioOf(options, 'idle').sizes) {
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
    fmt(r.burstBytesPerConnection / 1024, 1),
    fmt(r.bytesPerConnection / 1024, 1),
    fmt(r.heapPerConnection / 1024, 1),
    mb(r.rssAfter),
    r.error ? `FAILED: ${r.error}` : 'ok',
  ]);
  return table(['server', 'connections', 'connected', 'connections/s', 'server µs/conn', 'conn/s one core could take', 'KB RSS per conn after the burst', 'KB RSS per conn', 'KB heap per conn', 'server RSS MB', 'status'], body, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l']);
}

/**
 * `server` ÷ `other` of `key` within each round where both were measured, as "lowest–highest"
 * ("–" with fewer than two rounds). The host drifts between rounds; the pair of one round was
 * measured closest in time, and the spread of those pairs says how far a ratio of medians holds.
 */
export function roundRatioSpread(results, { scenario, rate, server, other, key }) {
  const ratios = [];
  for (const a of results) {
    if (a.scenario !== scenario || a.rate !== rate || a.server !== server) continue;
    const b = results.find((r) => r.scenario === scenario && r.rate === rate && r.server === other && r.round === a.round);
    if (b && Number.isFinite(a[key]) && Number.isFinite(b[key]) && b[key] !== 0) ratios.push(a[key] / b[key]);
  }
  if (ratios.length < 2) return '–';
  return `${ratio(Math.min(...ratios), 1)}–${ratio(Math.max(...ratios), 1)}`;
}

/** Perihelion ÷ each other server, per scenario and rate (or size). */
function ratiosTable(bench) {
  const out = [];
  const byRound = bench.options.rounds > 1;
  for (const scenario of loadScenarios(bench.options)) {
    const rows = summaryRows(bench, scenario);
    for (const rate of scenario.rates) {
      const p = rows.find((r) => r.server === 'perihelion' && r.rate === rate);
      if (!p) continue;
      for (const other of PEERS) {
        const o = rows.find((r) => r.server === other && r.rate === rate);
        if (!o) continue;
        const cpu = ratio(p.serverUsPerMsg, o.serverUsPerMsg);
        const spread = byRound ? ` (${roundRatioSpread(bench.results, { scenario: scenario.id, rate, server: 'perihelion', other, key: 'serverUsPerMsg' })})` : '';
        out.push([scenario.id, `Perihelion / ${LABELS[other]}`, fmt(rate, 0), ratio(p.deliveredPerSec, o.deliveredPerSec), ratio(p.p50, o.p50), ratio(p.p99, o.p99), cpu + spread, ratio(p.serverRss, o.serverRss)]);
      }
    }
  }
  const idle = idleSummary(bench);
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

function memoryTable({ serverNotes }, scenario) {
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

function problems({ options, results, serverNotes, idleRows }) {
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

function setupText({ options, pinning, cpuCount, startedAt, loadBefore }) {
  const cpuModel = os.cpus()[0]?.model?.trim() ?? 'unknown';
  return [
    `- Date: ${startedAt.toISOString()}`,
    `- Command: \`${commandLine()}\``,
    `- Machine: ${cpuCount} CPUs (\`nproc\`), ${cpuModel}, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB, ${os.type()} ${os.release()}, Node ${process.version}; load average at start ${loadBefore.map((l) => l.toFixed(2)).join(' ')}`,
    `- Pinning: ${pinning === 'none' ? 'none (see warnings)' : pinning}`,
    `- Scenarios: ${options.scenarios.join(', ')}; ${options.warmup > 0 ? `${options.warmup} s warm-up at the first rate (not measured), ` : ''}${options.duration} s per rate, up to ${options.drain} s drain, publisher inside the server process, ${options.rounds} round${options.rounds > 1 ? 's (server order rotated; tables show medians)' : ''}`,
    `- Versions: Perihelion ${versionOf('@perihelion/server')}, faye ${versionOf('faye')}, socket.io ${versionOf('socket.io')}${options.servers.includes('nchan') ? `, Nchan ${debianVersionOf('libnginx-mod-nchan')} on nginx ${debianVersionOf('nginx-light')} (Debian)` : ''}, ws ${versionOf('ws')} (load generator)`,
    `- Perihelion: \`createServer({ open: true, handshakeRate: 0, maxSessionsPerIp: 0, maxWebsocketsPerIp: 0, maxSubscriptionsPerIp: 0, publishRate: 0, pingInterval: 0 })\`, in-memory engine — limits off so they do not interfere (other options at their defaults: \`maxQueue\` 1000, history of 1000 messages per channel, positions on every message, presence events on); its WebSocket subscribers set up as the Perihelion client does (the bundled set-up: handshake, subscribe and first connect in one frame, handshake and subscribe answered in one, the connect held)`,
    `- Faye: \`new faye.NodeAdapter({ mount: '/faye', timeout: 25 })\` on node:http, published with \`bayeux.getClient().publish\``,
    ...(options.servers.includes('nchan')
      ? [
          "- Nchan: nginx with one worker, `nchan_subscriber websocket` at `/sub?id=<channels, comma-separated>` (`nchan_subscriber_first_message newest`), `nchan_publisher` at `/pub?id=<channel>`; published by HTTP POSTs pipelined on one keep-alive socket (in order) from a wrapper process on the server's CPU (not counted). Server CPU and RSS are the nginx worker's; its subscribers send nothing (the open WebSocket is the subscription), so its set-up is lighter than a Bayeux handshake, connect and subscribe",
        ]
      : []),
    ...(options.servers.includes('floor')
      ? [
          "- Node floor (a reference, not a peer): a bare `ws` server (`noServer`, no compression, no client tracking) on node:http; Nchan's subscribers (the open WebSocket to `/sub?id=<channels>` is the subscription); a publish builds one frame and writes it to the TCP socket of every subscriber. No protocol, sessions, queues, history or limits: what any Node server on `ws` spends at least",
          ...(options.scenarios.includes('longpoll')
            ? ['- Node floor, long-polling: the least a Bayeux long-polling server on node:http does (the Bayeux subscribers): the POSTed body read and parsed, a handshake answered with an id, a subscribe at once, a lone connect held and answered with the messages published meanwhile (string concatenation); no checks, extensions, limits, cookies or timers per request']
            : []),
        ]
      : []),
    ...(options.servers.includes('floor-bayeux') && options.scenarios.includes('idle')
      ? [
          "- Bayeux floor (a reference, idle scenario only): a bare `ws` server set up by Perihelion's subscribers (the bundled set-up): reads their one frame (JSON.parse, no checks), answers the handshake with an id and the subscribe in one frame built by string concatenation, holds the connect. No validation, extensions, sessions beyond an id, history, presence or limits: what the protocol's frames cost Node at set-up, beyond the Node floor's bare upgrade",
        ]
      : []),
    `- Socket.IO: \`new Server(http, { transports: [<the scenario's>] })\`, a room per channel, published with \`io.to(room).emit\`; clients ${options.socketioClient === 'official' ? "are socket.io-client instances with `transports: ['websocket']`" : 'speak the raw Engine.IO 4 / Socket.IO protocol over `ws` or HTTP polling (not socket.io-client), like the Bayeux clients'}`,
    '- Servers run with `--expose-gc`; idle memory is measured after a full collection.',
  ].join('\n');
}

/**
 * Prints the tables to stdout and writes the JSON (--json) and the Markdown report (--results).
 * bench: the invocation's options, pinning, cpuCount, startedAt, loadBefore (the load average at
 * the start), and its measurements: results (load runs), idleRows and serverNotes. partial: the
 * deadline cut the run short.
 */
export function printReport(bench, { partial = false } = {}) {
  const { options, pinning, startedAt, results, idleRows, serverNotes } = bench;
  const issues = problems(bench);
  const medians = options.rounds > 1 ? `, medians of ${options.rounds} rounds` : '';
  const sections = [];
  const mdSections = [];
  if (idleRows.length > 0) {
    const text = idleTable(idleSummary(bench));
    sections.push(`Idle: ${SCENARIOS.idle.title}${medians}`, '', text, '');
    mdSections.push(`## idle: ${SCENARIOS.idle.title}${medians}`, '', text, '');
  }
  for (const scenario of loadScenarios(options)) {
    const rows = summaryRows(bench, scenario);
    if (rows.length === 0) continue;
    sections.push(`${scenario.id}: ${scenario.title}${medians}`, '', resultsTable(rows), '');
    mdSections.push(`## ${scenario.id}: ${scenario.title}${medians}`, '', resultsTable(rows), '');
    if (options.rounds > 1) mdSections.push('Every round:', '', resultsTable(results.filter((r) => r.scenario === scenario.id), { withRound: true }), '');
    mdSections.push('Setup and memory:', '', memoryTable(bench, scenario), '');
  }
  const ratios = ratiosTable(bench);
  const out = [
    '',
    `Perihelion limits off for the benchmark: open: true, handshakeRate: 0, maxSessionsPerIp: 0, maxWebsocketsPerIp: 0, maxSubscriptionsPerIp: 0, publishRate: 0, pingInterval: 0${partial ? ' (PARTIAL: deadline exceeded)' : ''}`,
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
    setupText(bench),
    '',
    '## How to read the tables',
    '',
    '- delivered/s: deliveries received by all clients divided by the publishing window, or by the time',
    '  until the last one arrived when that is longer; offered/s: deliveries the schedule asks for (each',
    "  message times its channel's subscribers); loss: expected minus received after the drain;",
    '  msgs/frame: benchmark messages per WebSocket frame or poll response received (batching).',
    "- latency: receive time at the client minus the timestamp in the payload (same monotonic clock): the time the publisher's",
    '  tick began, shared by every message of the tick (a batch waits behind its own earlier messages on every server).',
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
    '  KB RSS per conn after the burst: the same growth read right after the last connection, before V8',
    '  gave back the young generation it grew for the burst (no forced collection).',
    `  ${options.idleWarmup > 0 ? `Before them ${options.idleWarmup} subscribers were set up as a warm-up (\`--idle-warmup\`), which stay open: not counted in the` : 'No warm-up (`--idle-warmup 0`): the first connections also pay for compiling the code they run.'}`,
    ...(options.idleWarmup > 0 ? ["  CPU per connection (they spare the measured ones the compiling of the code a set-up runs), counted in the memory per connection (growth over the fresh server's, divided by all open connections)."] : []),
    '',
    ...mdSections,
    '## Ratios',
    '',
    'Perihelion ÷ the other server in the same scenario and rate. delivered/s and connections/s: above 1 is',
    'better; latency, CPU per message, RSS and memory per connection: below 1 is better.',
    ...(options.rounds > 1
      ? ['With several rounds, the CPU per message is the ratio of the medians, and in brackets the lowest and', 'highest ratio within one round (the two measured closest in time): how much the host moved.']
      : []),
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
