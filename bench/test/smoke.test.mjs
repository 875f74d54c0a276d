// The benchmark's guard in CI: a short run (seconds) that checks every scenario still runs against
// Perihelion and Faye without loss, and that Perihelion's server CPU per delivered message in
// fan-out is not worse than Faye's in the same run. Ratios only, never absolute times: the machine
// is shared, and whatever slows one server down slows the other in the same run too.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nchanInstalled } from '../servers/nchan-install.mjs';

const RUN = fileURLToPath(new URL('../run.mjs', import.meta.url));
const NCHAN_INSTALLED = nchanInstalled();

/** Runs the benchmark with `args` and resolves to its JSON report. */
async function bench(args) {
  const dir = mkdtempSync(join(tmpdir(), 'perihelion-bench-'));
  const json = join(dir, 'report.json');
  const child = spawn(process.execPath, [RUN, ...args, '--results', '-', '--json', json], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  try {
    assert.equal(code, 0, `the benchmark failed:\n${output.slice(-4000)}`);
    return JSON.parse(readFileSync(json, 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('benchmark smoke run', () => {
  it('runs every scenario against Perihelion and Faye without loss', { timeout: 240_000 }, async () => {
    const report = await bench(['--servers', 'perihelion,faye', '--scenarios', 'idle,fanout,channels,longpoll,chat', '--subscribers', '50', '--idle-sizes', '100', '--rates', '20', '--duration', '1', '--drain', '3', '--warmup', '0']);
    assert.deepEqual(report.idle.map((r) => `${r.server}:${r.connected}`).sort(), ['faye:100', 'perihelion:100']);
    for (const scenario of ['fanout', 'channels', 'longpoll', 'chat']) {
      for (const server of ['perihelion', 'faye']) {
        const row = report.results.find((r) => r.scenario === scenario && r.server === server);
        assert.ok(row, `${scenario} ran on ${server}`);
        assert.ok(row.received > 0, `${scenario} on ${server} delivered`);
        assert.equal(row.lost, 0, `${scenario} on ${server}: nothing lost`);
      }
    }
  });

  it('runs the cluster scenarios (one Redis, a Redis Cluster it starts, round robin) against Perihelion without loss', { timeout: 240_000 }, async () => {
    const report = await bench(['--servers', 'perihelion', '--scenarios', 'cluster,clusterrc,clusterrr', '--subscribers', '60', '--rates', '20', '--duration', '1', '--drain', '3', '--warmup', '0']);
    for (const scenario of ['cluster', 'clusterrc', 'clusterrr']) {
      const row = report.results.find((r) => r.scenario === scenario && r.server === 'perihelion');
      assert.ok(row, `${scenario} ran`);
      assert.ok(row.received > 0, `${scenario} delivered`);
      assert.equal(row.lost, 0, `${scenario}: nothing lost`);
    }
  });

  it('runs Nchan (nginx) in its scenarios without loss', { timeout: 240_000, skip: NCHAN_INSTALLED ? false : 'Nchan is not installed (apt-get install nginx-light libnginx-mod-nchan)' }, async () => {
    const report = await bench(['--servers', 'nchan', '--scenarios', 'idle,fanout,channels,chat', '--subscribers', '50', '--idle-sizes', '100', '--rates', '20', '--duration', '1', '--drain', '3', '--settle', '1', '--warmup', '0']);
    assert.equal(report.idle.find((r) => r.server === 'nchan')?.connected, 100, 'every idle connection opened');
    for (const scenario of ['fanout', 'channels', 'chat']) {
      const row = report.results.find((r) => r.scenario === scenario && r.server === 'nchan');
      assert.ok(row, `${scenario} ran on Nchan`);
      assert.ok(row.received > 0 && row.serverUsPerMsg > 0, `${scenario} on Nchan delivered, and the nginx worker's CPU was read`);
      assert.equal(row.lost, 0, `${scenario} on Nchan: nothing lost`);
    }
  });

  it('runs the Node floor (bare ws; minimal Bayeux long-polling on node:http) in its scenarios without loss, and the Bayeux floor in the idle one', { timeout: 240_000 }, async () => {
    const report = await bench(['--servers', 'floor,floor-bayeux', '--scenarios', 'idle,fanout,channels,longpoll', '--subscribers', '50', '--idle-sizes', '100', '--rates', '20', '--duration', '1', '--drain', '3', '--settle', '1', '--warmup', '0']);
    assert.equal(report.idle.find((r) => r.server === 'floor')?.connected, 100, 'every idle connection opened');
    for (const scenario of ['fanout', 'channels', 'longpoll']) {
      const row = report.results.find((r) => r.scenario === scenario && r.server === 'floor');
      assert.ok(row?.received > 0, `${scenario} on the floor delivered`);
      assert.equal(row.lost, 0, `${scenario} on the floor: nothing lost`);
    }
    // Set up by Perihelion's subscribers (handshake, subscribe and connect answered): every one opened, its CPU read.
    const bayeux = report.idle.find((r) => r.server === 'floor-bayeux');
    assert.equal(bayeux?.connected, 100, 'every Bayeux floor subscriber set up');
    assert.ok(bayeux.serverUsPerConnection > 0, "the Bayeux floor's CPU per connection was read");
    assert.ok(!report.results.some((r) => r.server === 'floor-bayeux'), 'the Bayeux floor sits out the load scenarios');
  });

  it("Perihelion's server CPU per delivered message in fan-out is not worse than Faye's in the same run", { timeout: 240_000 }, async () => {
    const report = await bench(['--servers', 'perihelion,faye', '--scenarios', 'fanout', '--subscribers', '200', '--rates', '100', '--duration', '2', '--rounds', '3', '--warmup', '1']);
    const median = (server) => {
      const values = report.results.filter((r) => r.server === server).map((r) => r.serverUsPerMsg).sort((a, b) => a - b);
      assert.equal(values.length, 3, `three rounds of ${server}`);
      return values[1];
    };
    const perihelion = median('perihelion');
    const faye = median('faye');
    assert.ok(perihelion <= faye, `Perihelion ${perihelion.toFixed(2)} µs/msg vs Faye ${faye.toFixed(2)} µs/msg (median of three rounds)`);
  });
});

/** Runs a bench script of this folder to its end: its exit code, what it printed, and the rows of its table. */
async function runScript(name, args) {
  const script = fileURLToPath(new URL(`../${name}`, import.meta.url));
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  const rows = stdout.split('\n').filter((line) => /^\| \d/.test(line)).map((row) => row.split('|').slice(1, -1).map((cell) => cell.trim()));
  return { code, stderr, rows };
}

describe('bench/user-setup.mjs', () => {
  it('sets up anonymous clients and users at each size and prints a row for each', { timeout: 120_000 }, async () => {
    const { code, stderr, rows } = await runScript('user-setup.mjs', ['100,200']);
    assert.equal(code, 0, stderr.slice(-2000));
    assert.deepEqual(rows.map((row) => row[0]), ['100', '200']);
    for (const row of rows) assert.ok(row.slice(1, 4).every((cell) => Number(cell) > 0), row.join(' | '));
    assert.equal((await runScript('user-setup.mjs', ['0'])).code, 2, 'a size of 0 is a usage error');
  });
});

describe('bench/state-update.mjs', () => {
  it('times the three ways of changing a state channel at each size and prints a row for each', { timeout: 120_000 }, async () => {
    const { code, stderr, rows } = await runScript('state-update.mjs', ['100,300', '--changes', '5']);
    assert.equal(code, 0, stderr.slice(-2000));
    assert.match(stderr, /100 items .*round 1\/3: draft/, 'progress on stderr');
    assert.deepEqual(rows.map((row) => row[0]), ['100', '300']);
    for (const row of rows) assert.ok(row.slice(1, 6).every((cell) => Number(cell) > 0), row.join(' | '));
    assert.equal((await runScript('state-update.mjs', ['0'])).code, 2, 'a size of 0 is a usage error');
  });
});

describe('bench/state-snapshots.mjs', () => {
  it('answers a storm of snapshot requests at each size and prints a row for each', { timeout: 120_000 }, async () => {
    const { code, stderr, rows } = await runScript('state-snapshots.mjs', ['50,500', '--clients', '20']);
    assert.equal(code, 0, stderr.slice(-2000));
    assert.deepEqual(rows.map((row) => row[0]), ['50', '500']);
    for (const row of rows) assert.ok(row[2] === '20' && Number(row[3]) > 0 && Number(row[4]) > 0, row.join(' | '));
    assert.equal((await runScript('state-snapshots.mjs', ['--clients', '0'])).code, 2, 'no clients is a usage error');
  });

  it('with --relayed, the clients on another node of a Redis cluster: a row with both nodes’ CPU', { timeout: 120_000 }, async () => {
    const { code, stderr, rows } = await runScript('state-snapshots.mjs', ['500', '--clients', '20', '--relayed']);
    assert.equal(code, 0, stderr.slice(-2000));
    assert.equal(rows.length, 1);
    // The holder sends one snapshot for all: its share may round to 0.00 ms.
    const [holder, relay, storm] = rows[0].slice(3, 6).map(Number);
    assert.ok(rows[0][2] === '20' && holder >= 0 && relay > 0 && storm > 0, rows[0].join(' | '));
  });
});
