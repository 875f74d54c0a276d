/**
 * `perihelion serve --workers N`: N processes serve one port as one server, so that every core
 * of the machine is used.
 *
 * The primary process listens, forks the workers (`node:cluster`) and hands each new connection
 * to the next worker that is ready (ConnectionHandoff), and, without --redis, holds the
 * WorkerBroker, the one store of the machine that their WorkersEngines use. With --redis each
 * worker is a node of the cluster instead, and the primary only watches them. Either way a
 * request for a session another worker holds is forwarded to it, as between the nodes of a
 * cluster.
 *
 * A worker that dies is replaced (its sessions are gone: their clients handshake again); SIGTERM
 * or SIGINT to the primary drains every worker, then the primary exits.
 */
import cluster, { type Worker } from 'node:cluster';
import { createServer, type AddressInfo } from 'node:net';
import { ConnectionHandoff, STUCK_MS, WorkerBroker, isHandoffMessage, reportAcceptErrors, type ToBroker } from '@perihelion/server';
import type { Settings } from './settings.js';

/** The environment variables that tell a forked worker its node id and the address the primary listens on. */
export const WORKER_NODE_ENV = 'PERIHELION_WORKER_NODE';
export const WORKER_ADDRESS_ENV = 'PERIHELION_WORKER_ADDRESS';

/** A worker that dies within this time of its start is not replaced at once, but after a pause. */
const CRASH_PAUSE_MS = 1_000;

/**
 * The exit code of a process that refused its configuration (bin.ts). A worker that exits with it
 * before it was ever ready refused the settings every worker shares: replacing it would only
 * repeat the refusal for ever, so the whole server stops with it, as one process would.
 */
const REFUSED_CONFIGURATION = 2;

/** This process is a worker forked by `runWorkers`: its node id, else null. */
export function workerNode(): string | null {
  return cluster.isWorker ? (process.env[WORKER_NODE_ENV] ?? null) : null;
}

/** The address the primary of this worker listens on (it hands the connections over), else null. */
export function workerAddress(): AddressInfo | null {
  const value = cluster.isWorker ? process.env[WORKER_ADDRESS_ENV] : undefined;
  return value === undefined ? null : (JSON.parse(value) as AddressInfo);
}

/**
 * Runs the primary: listens on the port, forks `settings.workers` workers and keeps them running
 * until a signal. Rejects when the port cannot be listened on (EADDRINUSE).
 */
export async function runWorkers(settings: Settings, log: (line: string) => void = console.log): Promise<void> {
  const workers = new Map<Worker, { node: string; startedAt: number; ready: boolean }>();
  const handoff = new ConnectionHandoff({
    // A worker alive but not answering (a loop that never yields) gets no new connections meanwhile.
    onStuck: (worker, stuck) => {
      const entry = workers.get(worker);
      if (!entry) return;
      log(
        stuck
          ? `worker ${entry.node} (pid ${worker.process.pid}) has not answered for ${STUCK_MS / 1000} s: new connections go to the others until it does`
          : `worker ${entry.node} (pid ${worker.process.pid}) answers again and takes connections`,
      );
    },
  });
  // Accepted here and handed over unread: the worker that gets a connection reads all of it.
  const listener = createServer({ pauseOnConnect: true }, (socket) => handoff.hand(socket));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(settings.port ?? 8080, settings.host, () => {
      listener.off('error', reject);
      resolve();
    });
  });
  // Past the start, connections that could not be accepted (descriptors exhausted): said, and the server goes on.
  reportAcceptErrors(listener, (error) => console.error(`perihelion: ${error.message}`));
  const address = JSON.stringify(listener.address());

  const broker = settings.redis === undefined ? new WorkerBroker() : null;
  let stopping = false;
  /** The primary's exit code once every worker has gone (the configuration refused: 2). */
  let exitCode = 0;
  let lastNode = 0;
  /** Set once the first workers are forked: every later one replaces a worker that exited. */
  let started = false;

  const fork = (): void => {
    const node = `w${++lastNode}-${process.pid}`;
    const replacement = started;
    const worker = cluster.fork({ [WORKER_NODE_ENV]: node, [WORKER_ADDRESS_ENV]: address });
    const entry = { node, startedAt: Date.now(), ready: false };
    workers.set(worker, entry);
    // The hand-off's messages are read here, the rest is the broker's.
    worker.on('message', (message: unknown) => {
      if (!handoff.receive(worker, message)) return;
      // Every worker says when it is ready (the first ones within the start-up summary).
      if ((message as { k: string }).k !== 'ready') return;
      entry.ready = true;
      log(`${replacement ? '' : '  '}worker ${node} (pid ${worker.process.pid}) takes connections`);
    });
    if (broker) {
      // What is sent and not yet written to the worker's IPC channel (the broker bounds it).
      let backlog = 0;
      broker.attach(node, {
        send: (message) => {
          if (!worker.isConnected()) return;
          backlog++;
          worker.send(message, () => backlog--);
        },
        onMessage: (handler) =>
          void worker.on('message', (message: unknown) => {
            if (!isHandoffMessage(message)) handler(message as ToBroker);
          }),
        backlog: () => backlog,
      });
    }
    worker.on('online', () => log(`  worker ${node}: pid ${worker.process.pid}`));
    // The process could not be started (no descriptor left for its pipes, EMFILE) or its line
    // failed: said; its exit follows, and with it another try after the crash pause.
    worker.on('error', (error: Error) => console.error(`perihelion: worker ${node}: ${error.message}`));
    worker.on('exit', (code, signal) => {
      workers.delete(worker);
      handoff.remove(worker);
      void broker?.detach(node);
      if (!stopping && code === REFUSED_CONFIGURATION && !entry.ready) {
        // Its reason is on standard error already (the worker said it).
        console.error(`perihelion: worker ${node} refused the configuration; stopping`);
        exitCode = REFUSED_CONFIGURATION;
        stop('configuration refused');
      }
      if (stopping) {
        if (workers.size === 0) void (broker?.close() ?? Promise.resolve()).finally(() => process.exit(exitCode));
        return;
      }
      log(`worker ${node} (pid ${worker.process.pid}) exited (${signal ?? `code ${code}`}); its clients will handshake again with the others; starting another`);
      const quick = Date.now() - entry.startedAt < CRASH_PAUSE_MS;
      setTimeout(fork, quick ? CRASH_PAUSE_MS : 0);
    });
  };

  const stop = (reason: string): void => {
    if (stopping) return;
    stopping = true;
    log(`${reason}: shutting down ${workers.size} workers`);
    // Connections are still handed over while the workers drain (their clients collect what they
    // are owed, and new ones are told the server is shutting down), as one process's listener stays open.
    if (workers.size === 0) process.exit(exitCode);
    // Each worker drains its own sessions (drainTimeout), then exits; the primary follows.
    for (const worker of workers.keys()) worker.process.kill('SIGTERM');
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Each worker serves TLS itself: each reads the renewed certificate (one still starting reads
  // it as it starts, and would be ended by a SIGHUP before its handler is there).
  if (settings.tls) {
    process.on('SIGHUP', () => {
      for (const [worker, entry] of workers) if (entry.ready) worker.process.kill('SIGHUP');
    });
  }

  const count = settings.workers ?? 1;
  log(`Perihelion: ${count} workers on one port (primary pid ${process.pid}); ${broker ? 'their store is in this process (no Redis)' : 'each a node of the Redis cluster'}`);
  for (let i = 0; i < count; i++) fork();
  started = true;
}
