// npm run soak -- --minutes N: the churn of packages/server/test/churn.test.ts (raw clients on
// every transport coming and going, leaving cleanly, abruptly or impatiently) against a server in
// a child process (bench/soak-server.mjs) for N minutes. The server's memory (RSS, and the heap
// after a full collection) and sessions are sampled every few seconds; at the end a summary
// (baseline, peak, end, growth per hour) goes to stdout and a page with a plot of memory over time
// to test-output/soak-<timestamp>.html. Needs `npm run build:test` (it runs the compiled clients).
import { fork } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLIENTS = new URL('../packages/server/dist/test/churn-clients.js', import.meta.url);

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    workers: { type: 'string', default: '60' },
    'sample-every': { type: 'string', default: '5' },
    out: { type: 'string', default: 'test-output' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(`npm run soak -- [--minutes N] [--workers W] [--sample-every S] [--out DIR]

Churn (clients of every transport connecting, subscribing, receiving and leaving, cleanly or not)
against a Perihelion server in a child process for N minutes (default 10), W clients at a time
(default 60); memory and sessions sampled every S seconds (default 5). Writes DIR/soak-<time>.html.`);
  process.exit(0);
}
if (!existsSync(fileURLToPath(CLIENTS))) {
  console.error('soak: packages/server/dist/test/churn-clients.js is missing: run `npm run build:test` first');
  process.exit(2);
}
const minutes = Number(values.minutes);
const workers = Number(values.workers);
const sampleEvery = Number(values['sample-every']) * 1000;
const { CHURN_LEAVES, CHURN_TRANSPORTS, churnChannels, churnClient } = await import(CLIENTS.href);

const child = fork(fileURLToPath(new URL('soak-server.mjs', import.meta.url)), [], { cwd: ROOT, execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
const killChild = () => {
  try {
    child.kill('SIGKILL');
  } catch {}
};
process.on('exit', killChild);
process.on('SIGINT', () => process.exit(130));
const replies = [];
child.on('message', (message) => replies.shift()?.(message));
const ask = (type) => new Promise((resolve) => (replies.push(resolve), child.send({ type })));
const { url } = await new Promise((resolve) => child.once('message', resolve));

const MB = 1048576;
const fmt = (bytes) => `${(bytes / MB).toFixed(1)} MB`;
const samples = [];
const started = Date.now();
let lives = 0;
let errors = 0;
let received = 0;
let running = true;

async function sample(phase) {
  const s = await ask('sample');
  s.t = (s.at - started) / 1000;
  s.phase = phase;
  s.lives = lives;
  samples.push(s);
  return s;
}

await sample('start');
const worker = async () => {
  while (running) {
    const n = lives++;
    const outcome = await churnClient(url, {
      transport: CHURN_TRANSPORTS[n % CHURN_TRANSPORTS.length],
      leave: n % 8 === 5 ? 'impatient' : CHURN_LEAVES[(n >> 2) % 2],
      channels: churnChannels(n),
      lifetimeMs: 300 + ((n * 7919) % 2200),
      unsubscribeFirst: n % 5 === 1,
    });
    if (outcome.error) errors++;
    if (outcome.received > 0) received++;
  }
};
const pool = Array.from({ length: workers }, worker);
const endAt = started + minutes * 60_000;
while (Date.now() < endAt) {
  await sleep(Math.min(sampleEvery, Math.max(0, endAt - Date.now())));
  const s = await sample('churn');
  const elapsed = Math.round(s.t);
  process.stderr.write(`soak ${String(Math.floor(elapsed / 60)).padStart(2, '0')}:${String(elapsed % 60).padStart(2, '0')} / ${minutes} min  clients ${lives} (${errors} errors)  sessions ${s.sessions}  subscriptions ${s.subscriptions}  rss ${fmt(s.rss)}  heap ${fmt(s.heapUsed)}\n`);
}
running = false;
await Promise.all(pool);
// Abandoned sessions expire after maxInterval (1 s); give them that and a margin.
await sleep(3000);
const end = await sample('end');
const exited = new Promise((resolve) => child.once('exit', resolve));
child.send({ type: 'stop' });
await Promise.race([exited, sleep(5000)]);

// Summary: the baseline is the first sample once the churn runs at full strength (10% of the run,
// at least 20 s in); growth per hour is the least-squares slope of the heap over the second half.
const churnSamples = samples.filter((s) => s.phase === 'churn');
const baseline = churnSamples.find((s) => s.t >= Math.max(20, minutes * 6)) ?? churnSamples[0] ?? samples[0];
const peak = (key) => samples.reduce((max, s) => Math.max(max, s[key]), 0);
function slopePerHour(key) {
  const half = churnSamples.filter((s) => s.t >= (minutes * 60) / 2);
  if (half.length < 3) return NaN;
  const n = half.length;
  const mx = half.reduce((a, s) => a + s.t, 0) / n;
  const my = half.reduce((a, s) => a + s[key], 0) / n;
  const num = half.reduce((a, s) => a + (s.t - mx) * (s[key] - my), 0);
  const den = half.reduce((a, s) => a + (s.t - mx) ** 2, 0);
  return den === 0 ? 0 : (num / den) * 3600;
}
const summary = {
  minutes,
  clients: lives,
  errors,
  receivedRatio: lives > 0 ? received / lives : 0,
  baseline: { t: baseline.t, rss: baseline.rss, heapUsed: baseline.heapUsed, sessions: baseline.sessions },
  peak: { rss: peak('rss'), heapUsed: peak('heapUsed'), sessions: peak('sessions') },
  end: { rss: end.rss, heapUsed: end.heapUsed, sessions: end.sessions, subscriptions: end.subscriptions },
  growthPerHour: { rss: slopePerHour('rss'), heapUsed: slopePerHour('heapUsed') },
};
const perHour = (bytes) => (Number.isNaN(bytes) ? 'n/a (run too short)' : `${bytes >= 0 ? '+' : ''}${(bytes / MB).toFixed(1)} MB/h`);
const lines = [
  `soak: ${minutes} min, ${lives} clients (${errors} errors, ${(summary.receivedRatio * 100).toFixed(1)}% received a message), ${workers} at a time`,
  `  baseline (t=${baseline.t.toFixed(0)} s): rss ${fmt(baseline.rss)}, heap ${fmt(baseline.heapUsed)}, ${baseline.sessions} sessions`,
  `  peak:                rss ${fmt(summary.peak.rss)}, heap ${fmt(summary.peak.heapUsed)}, ${summary.peak.sessions} sessions`,
  `  end (churn stopped): rss ${fmt(end.rss)}, heap ${fmt(end.heapUsed)}, ${end.sessions} sessions, ${end.subscriptions} subscriptions`,
  `  growth per hour (second half, least squares): heap ${perHour(summary.growthPerHour.heapUsed)}, rss ${perHour(summary.growthPerHour.rss)}`,
];
console.log(lines.join('\n'));

mkdirSync(`${ROOT}${values.out}`, { recursive: true });
const file = `${values.out}/soak-${new Date(started).toISOString().replace(/[:.]/g, '-')}.html`;
writeFileSync(`${ROOT}${file}`, page(samples, lines));
console.log(`  plot: ${file}`);
process.exit(0);

/** The HTML page: the summary and an inline SVG of RSS, heap and sessions over time. */
function page(samples, lines) {
  const W = 900;
  const H = 360;
  const pad = { left: 60, right: 60, top: 20, bottom: 40 };
  const tMax = Math.max(1, ...samples.map((s) => s.t));
  const mMax = Math.max(1, ...samples.map((s) => s.rss)) * 1.1;
  const sMax = Math.max(1, ...samples.map((s) => s.sessions)) * 1.1;
  const x = (t) => pad.left + (t / tMax) * (W - pad.left - pad.right);
  const yM = (v) => H - pad.bottom - (v / mMax) * (H - pad.top - pad.bottom);
  const yS = (v) => H - pad.bottom - (v / sMax) * (H - pad.top - pad.bottom);
  const path = (key, y) => samples.map((s, i) => `${i === 0 ? 'M' : 'L'}${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)}`).join(' ');
  const ticks = [];
  for (let i = 0; i <= 5; i++) {
    const v = (mMax / 5) * i;
    ticks.push(`<text x="${pad.left - 6}" y="${yM(v) + 4}" text-anchor="end">${(v / MB).toFixed(0)}</text><line x1="${pad.left}" x2="${W - pad.right}" y1="${yM(v)}" y2="${yM(v)}" stroke="#eee"/>`);
    const sv = (sMax / 5) * i;
    ticks.push(`<text x="${W - pad.right + 6}" y="${yS(sv) + 4}">${sv.toFixed(0)}</text>`);
    const t = (tMax / 5) * i;
    ticks.push(`<text x="${x(t)}" y="${H - pad.bottom + 16}" text-anchor="middle">${(t / 60).toFixed(1)}</text>`);
  }
  const escape = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Perihelion soak ${escape(new Date(started).toISOString())}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}pre{background:#f6f6f6;padding:1em}svg text{font-size:11px;fill:#555}</style></head>
<body><h1>Perihelion soak run</h1>
<pre>${escape(lines.join('\n'))}</pre>
<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="memory and sessions over time">
${ticks.join('\n')}
<line x1="${pad.left}" x2="${pad.left}" y1="${pad.top}" y2="${H - pad.bottom}" stroke="#999"/>
<line x1="${pad.left}" x2="${W - pad.right}" y1="${H - pad.bottom}" y2="${H - pad.bottom}" stroke="#999"/>
<path d="${path('rss', yM)}" fill="none" stroke="#c0392b" stroke-width="2"/>
<path d="${path('heapUsed', yM)}" fill="none" stroke="#2471a3" stroke-width="2"/>
<path d="${path('sessions', yS)}" fill="none" stroke="#999" stroke-width="1" stroke-dasharray="4 3"/>
<text x="${pad.left}" y="${H - 8}">minutes</text>
<text x="12" y="${pad.top + 4}">MB</text><text x="${W - 50}" y="${pad.top + 4}">sessions</text>
<text x="${pad.left + 10}" y="${pad.top + 14}" style="fill:#c0392b">RSS</text>
<text x="${pad.left + 50}" y="${pad.top + 14}" style="fill:#2471a3">heap used (after GC)</text>
<text x="${pad.left + 190}" y="${pad.top + 14}" style="fill:#777">sessions (right axis)</text>
</svg>
<h2>Samples</h2>
<pre>${escape(['t (s)  rss (MB)  heap (MB)  sessions  subscriptions  clients', ...samples.map((s) => `${s.t.toFixed(0).padStart(5)}  ${(s.rss / MB).toFixed(1).padStart(8)}  ${(s.heapUsed / MB).toFixed(1).padStart(9)}  ${String(s.sessions).padStart(8)}  ${String(s.subscriptions).padStart(13)}  ${String(s.lives).padStart(7)}`)].join('\n'))}</pre>
</body></html>
`;
}
