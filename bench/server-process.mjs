// A server under test: one child process running bench/servers/<name>.mjs (pinned to CPU 0 when
// the run is pinned), spoken to over IPC. Every child is tracked so that the bench can kill them
// all on its way out, whatever way that is: a server left behind would skew the next run.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { log } from './log.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

const children = new Set();

/** Kills every server child still running (SIGKILL: no time for a graceful close on the way out). */
export function killAllServers() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  children.clear();
}

export class ServerProcess {
  /**
   * transport: the scenario's (BENCH_TRANSPORT); env: more environment for the child; pinned: run
   * it on CPU 0 with taskset; cpuProfDir: where V8 writes its CPU profile (--cpu-prof), or null.
   */
  constructor(name, { transport = 'websocket', env = {}, pinned = false, cpuProfDir = null } = {}) {
    this.name = name;
    this.exited = null;
    this.inbox = [];
    this.waiters = [];
    const script = `${HERE}servers/${name}.mjs`;
    // --expose-gc: memory is measured after a full collection (live data, not garbage), for every server alike.
    // BENCH_SERVER_FLAGS: more of node's flags, for looking into a server (--trace-gc, say).
    const node = [process.execPath, '--expose-gc', ...(process.env.BENCH_SERVER_FLAGS ? process.env.BENCH_SERVER_FLAGS.split(' ') : []), ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : []), script];
    // BENCH_SERVER_WRAP: a command the server runs under (valgrind, for bench/instructions.mjs).
    if (process.env.BENCH_SERVER_WRAP) node.unshift(...process.env.BENCH_SERVER_WRAP.split(' '));
    const [command, args] = pinned ? ['taskset', ['-c', '0', ...node]] : [node[0], node.slice(1)];
    this.child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: { ...process.env, BENCH_TRANSPORT: transport, ...env } });
    children.add(this.child);
    const relay = (stream) => {
      let buffer = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buffer += chunk;
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          log(`  [${name}] ${buffer.slice(0, nl)}`);
          buffer = buffer.slice(nl + 1);
        }
      });
    };
    relay(this.child.stdout);
    relay(this.child.stderr);
    this.child.on('message', (message) => {
      if (message.type === 'ready' && Array.isArray(message.pids)) this.serverPids = message.pids;
      const i = this.waiters.findIndex((w) => w.type === message.type);
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(message);
      else if (message.type === 'error') log(`  [${name}] error: ${message.message}`);
      else this.inbox.push(message);
    });
    this.child.on('exit', (code, signal) => {
      children.delete(this.child);
      this.exited = { code, signal };
      for (const w of this.waiters.splice(0)) w.reject(new Error(`${name} server exited (code ${code}, signal ${signal})`));
    });
    this.child.on('error', (error) => {
      for (const w of this.waiters.splice(0)) w.reject(error);
    });
  }

  /** The next message of this type (an 'error' message fails the wait). */
  next(type, ms) {
    const queued = this.inbox.findIndex((m) => m.type === type);
    if (queued >= 0) return Promise.resolve(this.inbox.splice(queued, 1)[0]);
    if (this.exited) return Promise.reject(new Error(`${this.name} server exited (code ${this.exited.code}, signal ${this.exited.signal})`));
    return new Promise((resolve, reject) => {
      const waiter = { type, resolve, reject };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`${this.name} server: no '${type}' within ${ms} ms`));
      }, ms);
      waiter.resolve = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      waiter.reject = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      this.waiters.push(waiter);
    });
  }

  send(message) {
    if (this.child.connected) this.child.send(message);
  }

  async request(message, replyType, ms = 30_000) {
    const reply = this.next(replyType, ms);
    this.send(message);
    return reply;
  }

  /** The processes doing the server's work: this child, or those its 'ready' names (Nchan's nginx worker). */
  get pids() {
    return this.serverPids ?? [this.child.pid];
  }

  async stop() {
    if (this.exited) return;
    const gone = new Promise((resolve) => this.child.once('exit', resolve));
    this.send({ type: 'close' });
    await Promise.race([gone, sleep(3000)]);
    if (!this.exited) {
      this.child.kill('SIGKILL');
      await Promise.race([gone, sleep(1000)]);
    }
  }
}
