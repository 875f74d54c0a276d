// CPU pinning: servers on CPU 0, this process (the load generator) on CPU 1, so that neither takes
// CPU time from the other and the server's CPU per message is its own. Linux's taskset does it;
// without it, or with one CPU, the bench runs unpinned and says so.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { log } from './log.mjs';

function allowedCpus() {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

// CPUs of the machine as `nproc` counts them before pinning (the pinned re-run inherits the count).
export const cpuCount = Number(process.env.PERIHELION_BENCH_NPROC) || (os.availableParallelism?.() ?? os.cpus().length);

/**
 * Pins this process to CPU 1 and resolves with how the run is pinned ('none' when it is not).
 * A process cannot move itself onto a CPU with taskset, so the first call re-runs `script` with the
 * same arguments under `taskset -c 1`, passes signals on to it, exits with its status and never
 * resolves; in the re-run, it finds itself pinned and resolves.
 */
export async function pinToCpu1({ pin, script }) {
  const hasTaskset = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' }).status === 0;
  if (!pin) {
    log('bench: --no-pin: servers and load generator are not pinned');
    return 'none';
  }
  if (process.env.PERIHELION_BENCH_PINNED === '1' && allowedCpus() === '1') return 'taskset: servers on CPU 0, load generator on CPU 1';
  if (!hasTaskset) {
    log('bench: WARNING: taskset not found (util-linux); running unpinned, server and load generator compete for CPUs');
    return 'none';
  }
  if (cpuCount < 2) {
    log(`bench: WARNING: ${cpuCount} CPU available; running unpinned, server and load generator share it`);
    return 'none';
  }
  // Re-run the script on CPU 1 and stand by until it finishes.
  const child = spawn('taskset', ['-c', '1', process.execPath, ...process.execArgv, script, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, PERIHELION_BENCH_PINNED: '1', PERIHELION_BENCH_NPROC: String(cpuCount) },
  });
  const forward = (signal) => () => child.kill(signal);
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  process.on('SIGHUP', forward('SIGHUP'));
  child.on('error', (error) => {
    log(`bench: could not start taskset: ${error.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => process.exit(code ?? (signal === 'SIGINT' ? 130 : 1)));
  return new Promise(() => {});
}
