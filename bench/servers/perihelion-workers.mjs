// Perihelion as `perihelion serve --workers N` runs it (packages/cli/src/workers.ts), without
// Redis: this process is the primary, holds the WorkerBroker (the one store of the machine),
// listens, and forks N `node:cluster` workers, handing each connection it accepts to the next one
// (ConnectionHandoff); each worker runs a Perihelion server whose WorkersEngine talks to the broker
// over the worker's IPC channel. N comes from BENCH_WORKERS (default 2). The server options are
// bench/servers/perihelion.mjs's.
//
// Publishing: the bench's publisher runs here, in the primary, and hands its messages over IPC to
// the workers, which call `server.publish(...)` as an application running in the workers would;
// what one tick of the publisher publishes goes to a worker in one IPC message. Each channel is
// published from one worker (the channels are dealt to the workers in turn as they first appear):
// two workers publishing to one channel at once would have no order between them, and the
// subscribers count a message older than the last one they saw as out of order.
//
// CPU and memory are those of the whole server: the primary (publisher, broker, the accepting of
// connections) plus every worker, read from /proc. At each reading the log says how the CPU
// since the previous one split between the processes.
import cluster from 'node:cluster';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { PERIHELION_LOAD_TEST_OPTIONS, listenOnLoopback, runServer } from './common.mjs';

const { createServer, ConnectionHandoff, WorkerBroker, WorkersEngine, isHandoffMessage, takeHandedConnections } = await import(new URL('../../packages/server/dist/src/index.js', import.meta.url).href);

const PATH = '/bayeux';
/** The environment variable that tells a forked worker its node id (as PERIHELION_WORKER_NODE does for the CLI). */
const NODE_ENV = 'BENCH_WORKER_NODE';
/** A worker that dies within this time of its start is replaced after a pause (as the CLI does). */
const CRASH_PAUSE_MS = 1_000;

if (cluster.isWorker) await runWorker();
else await runPrimary();

// ---------------------------------------------------------------------------------------------
// A worker: one Perihelion server, serving the connections the primary hands it.

async function runWorker() {
  const node = process.env[NODE_ENV];
  const bayeux = createServer({
    path: PATH,
    ...PERIHELION_LOAD_TEST_OPTIONS,
    engine: new WorkersEngine(undefined, node),
  });

  // The bench's own messages share the IPC channel with the engine's: they carry `bench`, not `k`,
  // so the engine ignores them, and the engine's are ignored here.
  process.on('message', (message) => {
    switch (message?.bench) {
      case 'publish':
        for (const [key, data] of message.batch) {
          bayeux.publish(`/bench/${key}`, data).then(undefined, (error) => {
            process.send({ bench: 'failed', node, message: String(error?.message ?? error) });
          });
        }
        break;
      case 'gc':
        if (typeof globalThis.gc === 'function') globalThis.gc();
        break;
      case 'close':
        void Promise.race([bayeux.close(), new Promise((r) => setTimeout(r, 1500))]).finally(() => process.exit(0));
        break;
    }
  });

  await bayeux.whenReady();
  // Tells the primary this worker is ready: connections come from then on.
  takeHandedConnections(bayeux.serveHandedConnections({ fallback: (req, res) => res.writeHead(404).end() }));
}

// ---------------------------------------------------------------------------------------------
// The primary: the broker, the workers, the publisher and the bench's IPC protocol.

async function runPrimary() {
  const count = Number(process.env.BENCH_WORKERS ?? 2);
  if (!Number.isInteger(count) || count < 1) throw new Error(`BENCH_WORKERS must be a whole number ≥ 1, got ${JSON.stringify(process.env.BENCH_WORKERS)}`);

  const broker = new WorkerBroker();
  /** The workers by slot (0 … count-1); a worker that dies is replaced in its slot. */
  const slots = new Array(count).fill(null);
  /** Publish failures the workers reported, thrown by the next publish (and counted there). */
  const failures = [];
  let stopping = false;
  let lastNode = 0;
  let deaths = 0;
  const ready = new Map(); // node → resolve, until the worker takes connections
  const handoff = new ConnectionHandoff();

  const fork = (slot) => {
    const node = `w${++lastNode}-${process.pid}`;
    const worker = cluster.fork({ [NODE_ENV]: node });
    const entry = { worker, node, startedAt: Date.now() };
    slots[slot] = entry;
    broker.attach(node, {
      send: (message) => {
        if (worker.isConnected()) worker.send(message);
      },
      onMessage: (handler) =>
        void worker.on('message', (message) => {
          if (!isHandoffMessage(message)) handler(message);
        }),
    });
    worker.on('message', (message) => {
      if (handoff.receive(worker, message)) {
        if (message.k === 'ready') ready.get(node)?.();
      } else if (message?.bench === 'failed') {
        failures.push(`worker ${node}: ${message.message}`);
      }
    });
    worker.on('exit', (code, signal) => {
      handoff.remove(worker);
      void broker.detach(node);
      if (slots[slot] === entry) slots[slot] = null;
      if (stopping) return;
      deaths++;
      // Loud: the bench relays this to its log, and the run's losses follow from it.
      console.error(`worker ${node} (pid ${worker.process.pid}) exited (${signal ?? `code ${code}`}); ${deaths} worker death(s) so far; starting another`);
      const quick = Date.now() - entry.startedAt < CRASH_PAUSE_MS;
      setTimeout(() => {
        if (!stopping) fork(slot);
      }, quick ? CRASH_PAUSE_MS : 0);
    });
    return entry;
  };

  /** The slot each channel is published from: dealt in turn as the channels first appear. */
  const routes = new Map();
  const publish = (key, data) => {
    if (failures.length > 0) throw new Error(failures.shift());
    let slot = routes.get(key);
    if (slot === undefined) {
      slot = routes.size % count;
      routes.set(key, slot);
    }
    const entry = slots[slot];
    if (!entry || !entry.worker.isConnected()) throw new Error(`worker slot ${slot} is down`);
    // What one tick of the publisher publishes goes to each worker in one IPC message, at the end
    // of the tick: the worker publishes it in the same burst, in order, as one process would.
    if (outbox.size === 0) queueMicrotask(flush);
    let batch = outbox.get(entry);
    if (!batch) outbox.set(entry, (batch = []));
    batch.push([key, data]);
  };
  const outbox = new Map(); // worker entry → [key, data][] of this tick
  const flush = () => {
    for (const [entry, batch] of outbox) {
      if (entry.worker.isConnected()) entry.worker.send({ bench: 'publish', batch });
      else failures.push(`worker ${entry.node} exited with ${batch.length} messages to publish`);
    }
    outbox.clear();
  };

  /**
   * A worker's CPU and memory from /proc/<pid>/stat: utime + stime of all its threads (µs, read in
   * clock ticks of 10 ms: a tick per worker over a run of seconds) and its resident bytes; null
   * once it is gone.
   */
  function readStat(pid) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return { us: (Number(fields[11]) + Number(fields[12])) * 10_000, rss: Number(fields[21]) * 4096 };
    } catch {
      return null;
    }
  }
  const workerCpuUs = (pid) => (pid ? (readStat(pid)?.us ?? null) : null);

  // At each reading the bench takes, the log gets how the CPU since the previous one split
  // between the primary and each worker. The idle scenario asks for memory after a full
  // collection: the workers collect too (the primary's reading follows at once, so a worker's
  // collection shows in the next reading).
  let split = null;
  process.on('message', (message) => {
    if (message?.type !== 'stats') return;
    const now = { at: performance.now(), primary: process.cpuUsage(), workers: new Map() };
    for (const entry of slots) {
      const us = entry ? workerCpuUs(entry.worker.process.pid) : null;
      if (us !== null) now.workers.set(entry.node, us);
    }
    if (split) {
      const ms = (after, before) => `${Math.round((after - before) / 1000).toLocaleString('en')} ms`;
      const parts = [`primary ${ms(now.primary.user + now.primary.system, split.primary.user + split.primary.system)}`];
      for (const [node, us] of now.workers) parts.push(`${node} ${split.workers.has(node) ? ms(us, split.workers.get(node)) : 'new'}`);
      console.error(`CPU over the last ${Math.round(now.at - split.at).toLocaleString('en')} ms: ${parts.join(', ')}`);
    }
    split = now;
    if (message.gc === true) {
      for (const entry of slots) if (entry?.worker.isConnected()) entry.worker.send({ bench: 'gc' });
    }
  });

  // Accepted here and handed over unread, as `perihelion serve --workers` does.
  const listener = net.createServer({ pauseOnConnect: true }, (socket) => handoff.hand(socket));
  const start = async () => {
    const { port } = await listenOnLoopback(listener, PATH);
    await Promise.all(
      Array.from({ length: count }, (_, slot) => {
        const { node } = fork(slot);
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`worker ${node} did not take connections within 15 s`)), 15_000);
          ready.set(node, () => {
            clearTimeout(timer);
            ready.delete(node);
            resolve();
          });
        });
      }),
    );
    return { port, path: PATH, pids: [process.pid, ...slots.map((e) => e.worker.process.pid)] };
  };

  const stop = async () => {
    stopping = true;
    listener.close();
    handoff.close();
    const exits = slots.filter(Boolean).map((entry) => new Promise((resolve) => (entry.worker.isDead() ? resolve() : entry.worker.once('exit', resolve))));
    for (const entry of slots) if (entry?.worker.isConnected()) entry.worker.send({ bench: 'close' });
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 2000))]);
    for (const entry of slots) if (entry && !entry.worker.isDead()) entry.worker.process.kill('SIGKILL');
    await broker.close();
    if (deaths > 0) console.error(`${deaths} worker death(s) during this server's life`);
  };

  /**
   * The whole server's CPU (µs) and RSS: this process's own (process.cpuUsage, all its threads)
   * plus every worker's. No heap figure: it would be one process's of several.
   */
  let gone = 0; // µs of the workers that exited (their last reading)
  const lastReading = new Map(); // worker pid → µs
  const usage = () => {
    const own = process.cpuUsage();
    let cpu = own.user + own.system;
    let rss = process.memoryUsage().rss;
    const current = new Set();
    for (const entry of slots) {
      const pid = entry?.worker.process.pid;
      if (!pid) continue;
      current.add(pid);
      const stat = readStat(pid);
      // One that exited between the list and the read keeps its last reading.
      if (stat) {
        lastReading.set(pid, stat.us);
        rss += stat.rss;
      }
    }
    for (const [pid, us] of lastReading) {
      if (current.has(pid)) cpu += us;
      else {
        gone += us;
        lastReading.delete(pid);
      }
    }
    return { cpu: { user: cpu + gone, system: 0 }, rss, heapUsed: NaN };
  };

  await runServer({ name: 'perihelion-workers', start, publish, stop, usage });
}
