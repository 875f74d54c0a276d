// The load scenarios' measurement: one server, its subscribers, and a run per publish rate, with
// the server's CPU and memory, the deliveries and their latency, and the other load on the machine
// around each run. The cluster scenario runs here too, on a ServerGroup in place of one server.
import { setTimeout as sleep } from 'node:timers/promises';
import { Recorder, closeClient, nowMs } from './clients.mjs';
import { ServerGroup, cleanRedis, startLocalRedisCluster } from './cluster.mjs';
import { fmt } from './format.mjs';
import { log } from './log.mjs';
import { cpuBusyMs, runQueueWait } from './other-load.mjs';
import { expectedDeliveries } from './scenarios.mjs';
import { ServerProcess } from './server-process.mjs';
import { connectAll, subscriberFactory, subscribersByKey } from './subscribers.mjs';

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

/** The value at percentile p of the sorted values (nearest rank), NaN when there are none. */
function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/**
 * Has the server publish `rate` messages/s for `duration` s, then waits (at most --drain s) until
 * the recorder has every delivery those messages owe the subscribers.
 */
async function publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration, drain }) {
  const published = await server.request({ type: 'run', runId, rate, duration, keys: scenario.keys, batch: scenario.batch }, 'published', duration * 1000 + 60_000);
  const expected = expectedDeliveries(scenario, subscribers, published.count);
  const drainUntil = Date.now() + drain * 1000;
  while (recorder.count < expected && Date.now() < drainUntil) await sleep(20);
  return { published, expected };
}

/**
 * One server in one load scenario: start it, connect the scenario's subscribers, probe every channel,
 * warm up, then publish at each rate and measure. A row per rate goes to bench.results, and one note
 * (set-up, memory, failure) to bench.serverNotes.
 */
export async function benchLoad(bench, name, scenario, round) {
  const { options, pinning, deadlineAt } = bench;
  const note = { scenario: scenario.id, name, round, clients: scenario.clients };
  bench.serverNotes.push(note);
  log(`\n${name} · ${scenario.id}: starting server${pinning !== 'none' ? ' on CPU 0' : ''}`);
  const prefix = `perihelion-bench-${process.pid}-${name}-${round}:`;
  const launch = { transport: scenario.transport, pinned: pinning !== 'none', cpuProfDir: options.cpuProf };
  // On a Redis Cluster: a fresh local one for this server and round, gone with it.
  const redisCluster = scenario.redisCluster ? await startLocalRedisCluster() : null;
  const redisUrl = redisCluster?.url ?? options.redis;
  const server = scenario.cluster ? new ServerGroup(name, scenario.cluster, { redisUrl, redisCluster: redisCluster !== null, prefix, ...launch }) : new ServerProcess(name, launch);
  const recorder = new Recorder();
  let clients = [];
  try {
    // BENCH_READY_MS: longer for a server that starts slowly (under valgrind, bench/instructions.mjs).
    const ready = await server.next('ready', Number(process.env.BENCH_READY_MS ?? 20_000));
    note.idleRss = ready.rss;
    const ports = ready.ports ?? [ready.port];
    log(`${name}: listening on 127.0.0.1:${ports.join(', ')}${ready.path} (pid ${server.pids.join(', ')})`);

    // In a cluster, client i connects to node i mod the number of nodes; without affinity
    // (roundRobin), client i starts on node i mod n and sends each request to the next node.
    const factories = ports.map((port, i) => subscriberFactory(name, scenario.roundRobin ? [...ports.slice(i), ...ports.slice(0, i)] : port, ready.path, scenario, options));
    const setup = await connectAll(name, (common, i) => factories[i % factories.length](common, i), recorder, scenario.clients, { concurrency: options.concurrency, connectTimeout: options.connectTimeout });
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
      await publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration: options.warmup, drain: options.drain });
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
      const { published, expected } = await publishAndDrain(server, recorder, scenario, subscribers, { runId, rate, duration: options.duration, drain: options.drain });
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
        // The kernel's share (system time: mostly the socket writes) apart from the process's own (user).
        serverSysUsPerMsg: received > 0 ? (after.cpu.system - before.cpu.system) / received : NaN,
        serverRss: after.rss,
        serverRssPeak: after.rssPeak,
        genCpuPct: (100 * genCpuMs) / genWall,
        // With pinning, CPU 0 runs only the server and CPU 1 only this generator: the rest is other load.
        othersCpu0Pct: pinning !== 'none' ? others('0', serverCpuMs) : NaN,
        othersCpu1Pct: pinning !== 'none' ? others('1', genCpuMs) : NaN,
        serverWaitMs: waitAfter - waitBefore,
        wallMs,
      };
      bench.results.push(row);
      log(
        `${name}:   delivered ${received.toLocaleString('en')}/${expected.toLocaleString('en')} (${fmt(row.lossPct, 2)} % lost), ` +
          `${fmt(row.deliveredPerSec, 0)}/s, p50 ${fmt(row.p50, 1)} ms, p99 ${fmt(row.p99, 1)} ms, max ${fmt(row.max, 1)} ms, ` +
          `server CPU ${fmt(row.serverCpuPct, 0)} % (${fmt(row.serverUsPerMsg, 2)} µs/msg, of which system ${fmt(row.serverSysUsPerMsg, 2)}), generator CPU ${fmt(row.genCpuPct, 0)} %, ` +
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
    if (redisCluster) await redisCluster.stop();
    else if (scenario.cluster) await cleanRedis(options.redis, prefix);
  }
}
