// Other load on the machine: busy time per CPU (/proc/stat) and how long the server's main thread
// waited for a CPU (/proc/<pid>/schedstat). Both are Linux-only; elsewhere they read as unknown.
// Measured around every load run, to tell a run that other work on the machine distorted.
import { readFileSync } from 'node:fs';

const TICK_MS = 10; // USER_HZ is 100 on Linux

/** Busy time of each CPU so far, ms by CPU number, or null where /proc/stat cannot be read. */
export function cpuBusyMs() {
  try {
    const busy = {};
    for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
      const m = /^cpu(\d+)\s+(.*)$/.exec(line);
      if (!m) continue;
      const [user, nice, system, , , , , steal] = m[2].split(/\s+/).map(Number);
      busy[m[1]] = (user + nice + system + (steal || 0)) * TICK_MS; // irq and softirq left out: loopback traffic of the run itself lands there
    }
    return busy;
  } catch {
    return null;
  }
}

/** How long the thread `pid` has waited for a CPU so far, ms (NaN when unknown). */
export function runQueueWaitMs(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e6;
  } catch {
    return NaN;
  }
}

/** The same, summed over several processes (a cluster's nodes, or Nchan's nginx worker). */
export const runQueueWait = (pids) => pids.reduce((sum, pid) => sum + runQueueWaitMs(pid), 0);
