// The idle scenario's measurement: a fresh server, `size` subscribers connected as fast as they
// come, then memory per connection once the server has settled, and the server's CPU per connection.
// A warm-up of `--idle-warmup` subscribers comes first, as the load scenarios publish for a while
// before measuring: the code a set-up runs is compiled by then, a cost the server pays once and
// not per connection. They stay open (closing them would have servers publish presence leaves, or
// free memory, inside the measurement): the CPU per connection is the measured burst's, the
// memory per connection that of every connection, warm-up included, over the fresh server's.
import { setTimeout as sleep } from 'node:timers/promises';
import { Recorder, closeClient } from './clients.mjs';
import { fmt } from './format.mjs';
import { log } from './log.mjs';
import { SCENARIOS } from './scenarios.mjs';
import { ServerProcess } from './server-process.mjs';
import { connectAll, subscriberFactory } from './subscribers.mjs';

/** Idle: connect `size` subscribers to a fresh server; memory per connection and connect rate. */
export async function benchIdle(bench, name, scenario, size, round) {
  const { options, pinning } = bench;
  const row = { scenario: scenario.id, server: name, round, size };
  bench.idleRows.push(row);
  log(`\n${name} · idle ${size}: starting server${pinning !== 'none' ? ' on CPU 0' : ''}`);
  const server = new ServerProcess(name, { transport: scenario.transport, pinned: pinning !== 'none', cpuProfDir: options.cpuProf });
  const recorder = new Recorder();
  let clients = [];
  let warmupClients = [];
  try {
    const ready = await server.next('ready', 20_000);
    // Memory from the fresh server: the burst of the warm-up grows V8's young generation too, and
    // it is given back only seconds later, inside the measurement.
    const fresh = await server.request({ type: 'stats', gc: true }, 'stats');
    const concurrency = Math.max(options.concurrency, 200);
    const factory = subscriberFactory(name, ready.port, ready.path, { ...SCENARIOS.fanout, transport: 'websocket' }, options);
    if (options.idleWarmup > 0) {
      const warmup = await connectAll(`${name} (warm-up)`, factory, recorder, options.idleWarmup, { concurrency, connectTimeout: options.connectTimeout });
      warmupClients = warmup.clients;
      if (warmup.errors.size > 0) row.setupErrors = [...warmup.errors].map(([message, count]) => `warm-up: ${count}× ${message}`);
    }
    const before = await server.request({ type: 'stats', gc: true }, 'stats');
    const setup = await connectAll(name, factory, recorder, size, { concurrency, connectTimeout: options.connectTimeout });
    clients = setup.clients;
    row.connected = clients.length;
    row.setupSeconds = setup.seconds;
    row.connectsPerSec = clients.length / setup.seconds;
    if (setup.errors.size > 0) row.setupErrors = [...(row.setupErrors ?? []), ...[...setup.errors].map(([message, count]) => `${count}× ${message}`)];
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
    row.rssBefore = fresh.rss;
    row.rssAfter = after.rss;
    row.heapBefore = fresh.heapUsed;
    row.heapAfter = after.heapUsed;
    const open = clients.length + warmupClients.length;
    row.bytesPerConnection = clients.length > 0 ? (after.rss - fresh.rss) / open : NaN;
    // Right after the burst, as a client sees a server that just took a wave of connections.
    row.burstBytesPerConnection = clients.length > 0 ? (connected.rss - fresh.rss) / open : NaN;
    // Null for a server without a JavaScript heap (Nchan).
    row.heapPerConnection = clients.length > 0 && after.heapUsed !== null ? (after.heapUsed - fresh.heapUsed) / open : NaN;
    row.cpuMs = (connected.cpu.user + connected.cpu.system - before.cpu.user - before.cpu.system) / 1000;
    // The server's own cost of a connection (TCP accept, upgrade, handshake, connect, subscribe),
    // which the load generator's speed does not limit: the rate one core could sustain is 1e6 / µs.
    row.serverUsPerConnection = clients.length > 0 ? (1000 * row.cpuMs) / clients.length : NaN;
    log(`${name}: ${clients.length} idle connections: ${fmt(row.burstBytesPerConnection / 1024, 1)} KB RSS each right after the burst, ${fmt(row.bytesPerConnection / 1024, 1)} KB RSS and ${fmt(row.heapPerConnection / 1024, 1)} KB heap each; ${fmt(row.connectsPerSec, 0)} connections/s`);
  } catch (error) {
    row.error = String(error?.message ?? error);
    log(`${name}: FAILED: ${row.error}`);
  } finally {
    for (const client of [...warmupClients, ...clients]) closeClient(client);
    await server.stop();
  }
}
