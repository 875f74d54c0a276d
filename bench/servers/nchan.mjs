// Nchan 1.3, the nginx module written in C: nginx with one worker process, WebSocket
// subscribers at /sub?id=<channel>[,<channel>…], messages published by HTTP POST to /pub?id=<channel>.
// Debian packages it (apt-get install nginx-light libnginx-mod-nchan); the bench skips it when
// absent. Only the nginx worker's CPU and memory count as the server's. This wrapper publishes
// from the server's CPU, as the other servers' in-process publishers do: on the generator's CPU
// its POSTs would wait behind a busy generator and count as Nchan's latency.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runServer } from './common.mjs';
import { NCHAN_MODULE, NGINX, nchanInstalled } from './nchan-install.mjs';


/** nginx warns that worker_connections (see the configuration) exceed the open-file limit: on purpose. */
const EXPECTED_WARNING = /worker_connections exceed open file resource limit/;

/** A free TCP port on the loopback (nginx is told which port to listen on). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function config(dir, port) {
  return `
load_module ${NCHAN_MODULE};
worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events {
  # Nchan takes connection slots beyond the sockets (at 20 000, 19 000 subscribers were too many).
  worker_connections 40000;
  multi_accept on;
}
http {
  access_log off;
  # The publisher pipelines every POST on one connection; nginx would close it after 1 000.
  keepalive_requests 100000000;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location = /sub {
      nchan_subscriber websocket;
      nchan_channel_id $arg_id;
      nchan_channel_id_split_delimiter ",";
      nchan_subscriber_first_message newest;
    }
    location = /pub {
      nchan_publisher;
      nchan_channel_id $arg_id;
    }
  }
}
`;
}

/**
 * CPU (µs) and resident memory (bytes) of one process, from /proc. The CPU is the scheduler's
 * run time in ns (`schedstat`), not `stat`'s 10 ms ticks, which a short run would round to zero;
 * it is not split into user and system time.
 */
function processUsage(pid) {
  const runNs = Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { user: runNs / 1000, system: 0, rss: rssKb * 1024 };
}

function childrenOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

let nginx = null;
let worker = null;
let dir = null;
let port = 0;

async function start() {
  if (!nchanInstalled()) {
    throw new Error(`Nchan is not installed (${NGINX}, ${NCHAN_MODULE}): apt-get install nginx-light libnginx-mod-nchan`);
  }
  dir = mkdtempSync(join(tmpdir(), 'perihelion-bench-nchan-'));
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub));
  port = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), config(dir, port));
  nginx = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'inherit', 'pipe'] });
  nginx.stderr.setEncoding('utf8');
  nginx.stderr.on('data', (text) => {
    const lines = text.split('\n').filter((line) => line && !EXPECTED_WARNING.test(line));
    if (lines.length > 0) console.error(lines.join('\n'));
  });
  const exited = new Promise((resolve) => nginx.once('exit', (code) => resolve(code)));
  // Ready once the port answers and the worker exists.
  for (let waited = 0; ; waited += 50) {
    const code = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve(undefined), 50))]);
    if (code !== undefined) throw new Error(`nginx exited with code ${code}: ${readFileSync(join(dir, 'error.log'), 'utf8').slice(-500)}`);
    const [child] = childrenOf(nginx.pid);
    const listening = child !== undefined && (await new Promise((resolve) => net.connect(port, '127.0.0.1').once('connect', function () { this.destroy(); resolve(true); }).once('error', () => resolve(false))));
    if (listening) {
      worker = child;
      break;
    }
    if (waited > 10_000) throw new Error('nginx did not start listening within 10 s');
  }
  return { port, path: '/sub', pids: [worker] };
}

/**
 * The publisher: HTTP/1.1 POSTs pipelined on one keep-alive socket, so that messages reach
 * nginx in the order they were published (parallel sockets would reorder them) without waiting
 * a round trip each. Responses are only counted, and any status other than 2xx is an error.
 */
class Publisher {
  constructor(port) {
    this.port = port;
    this.socket = null;
    this.pending = 0;
    this.errors = [];
    this.tail = '';
  }

  connect() {
    this.socket = net.connect(this.port, '127.0.0.1');
    this.socket.setNoDelay(true);
    this.socket.setEncoding('latin1');
    this.socket.on('data', (text) => this.read(text));
    this.socket.on('error', (error) => this.errors.push(error.message));
    this.socket.on('close', () => {
      // Requests written but not answered are lost with the connection.
      if (this.pending > 0) this.errors.push(`the publishing connection closed with ${this.pending} POSTs unanswered`);
      this.pending = 0;
      this.socket = null;
    });
  }

  read(text) {
    // Status lines only; the bodies (a few lines of channel info) never contain one.
    const all = this.tail + text;
    const status = /HTTP\/1\.1 (\d{3})/g;
    let match;
    let end = 0;
    while ((match = status.exec(all)) !== null) {
      this.pending--;
      if (match[1][0] !== '2') this.errors.push(`publish answered ${match[1]}`);
      end = status.lastIndex;
    }
    // Keep what could be the start of a status line split across reads.
    this.tail = all.slice(Math.max(end, all.length - 16));
  }

  publish(key, data) {
    if (this.socket === null) this.connect();
    if (this.errors.length > 0) throw new Error(this.errors.shift());
    const body = JSON.stringify(data);
    this.pending++;
    this.socket.write(`POST /pub?id=${encodeURIComponent(key)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }
}

let publisher = null;

function publish(key, data) {
  publisher ??= new Publisher(port);
  publisher.publish(key, data);
}

let lastUsage = { cpu: { user: 0, system: 0 }, rss: 0, heapUsed: NaN };

function usage() {
  if (worker === null) return lastUsage;
  try {
    const w = processUsage(worker);
    // No JavaScript heap here: the heap column reads "–" for Nchan.
    lastUsage = { cpu: { user: w.user, system: w.system }, rss: w.rss, heapUsed: NaN };
  } catch {
    // The worker is gone (nginx stopping): its last reading stands.
  }
  return lastUsage;
}

async function stop() {
  publisher?.socket?.destroy();
  if (nginx && nginx.exitCode === null) {
    const gone = new Promise((resolve) => nginx.once('exit', resolve));
    nginx.kill('SIGTERM');
    await Promise.race([gone, new Promise((resolve) => setTimeout(resolve, 2000))]);
    if (nginx.exitCode === null) nginx.kill('SIGKILL');
  }
  if (dir) {
    // What nginx complained about (refused connections, limits) goes to the bench's log.
    let log = '';
    try {
      log = readFileSync(join(dir, 'error.log'), 'utf8').trim();
    } catch {}
    log = log.split('\n').filter((line) => !EXPECTED_WARNING.test(line)).join('\n');
    if (log) console.error(`nginx error.log (last lines):\n${log.split('\n').slice(-10).join('\n')}`);
    rmSync(dir, { recursive: true, force: true });
  }
}

// Never leave an nginx behind.
process.on('exit', () => {
  if (nginx && nginx.exitCode === null) nginx.kill('SIGKILL');
});

await runServer({ name: 'nchan', start, publish, stop, usage });
