// Nchan 1.3, the nginx module written in C: nginx with one worker process, WebSocket
// subscribers at /sub?id=<channel>[,<channel>…], messages published by HTTP POST to /pub?id=<channel>.
// Debian packages it (apt-get install nginx-light libnginx-mod-nchan); the bench skips it when
// absent. Only the nginx worker's CPU and memory count as the server's. This wrapper publishes
// from the server's CPU, as the other servers' in-process publishers do: on the generator's CPU
// its POSTs would wait behind a busy generator and count as Nchan's latency.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runServer } from './common.mjs';

export const NGINX = '/usr/sbin/nginx';
export const NCHAN_MODULE = '/usr/lib/nginx/modules/ngx_nchan_module.so';

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
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
let port = 0;

async function start() {
  if (!existsSync(NGINX) || !existsSync(NCHAN_MODULE)) {
    throw new Error(`Nchan is not installed (${NGINX}, ${NCHAN_MODULE}): apt-get install nginx-light libnginx-mod-nchan`);
  }
  dir = mkdtempSync(join(tmpdir(), 'perihelion-bench-nchan-'));
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub));
  port = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), config(dir, port));
  nginx = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'inherit', 'inherit'] });
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

function publish(key, data) {
  const body = JSON.stringify(data);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: `/pub?id=${encodeURIComponent(key)}`, method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode >= 200 && res.statusCode < 300 ? resolve() : reject(new Error(`publish answered ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
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
    if (log) console.error(`nginx error.log (last lines):\n${log.split('\n').slice(-10).join('\n')}`);
    rmSync(dir, { recursive: true, force: true });
  }
}

// Never leave an nginx behind.
process.on('exit', () => {
  if (nginx && nginx.exitCode === null) nginx.kill('SIGKILL');
});

await runServer({ name: 'nchan', start, publish, stop, usage });
