/**
 * The overload policy: past its capacity the server sheds load by stated rules instead of falling
 * over. Two watermarks, each a knob:
 *
 * - `maxSessions`: sessions on this node. Past it, new handshakes are refused (503, advice to try
 *   again later) and `/ready` answers 503 so that a balancer sends new clients elsewhere;
 *   existing sessions go on untouched.
 * - `maxMemory`: the process's resident memory, in MB (default: V8's heap limit, past which the
 *   process would die anyway). Past it, new handshakes AND client publishes are refused (503),
 *   and `/ready` answers 503; deliveries to existing sessions go on, and slow consumers are
 *   handled by `queueOverflow`. Read once a second (the read is a system call, not a heap walk).
 *
 * Both are watermarks with no hysteresis beyond the sampling: as soon as the load goes down, the
 * server takes new work again.
 */
import { getHeapStatistics } from 'node:v8';
import type { ResolvedOptions } from '../options.js';

/** How often resident memory is read. */
const SAMPLE_MS = 1000;

export class LoadGuard {
  /** Resident memory at the last sample, in bytes. */
  private rss = 0;
  private readonly memoryLimit: number;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly options: Pick<ResolvedOptions, 'maxSessions' | 'maxMemory'>,
    private readonly sessionCount: () => number,
  ) {
    this.memoryLimit = (options.maxMemory > 0 ? options.maxMemory : Math.floor(getHeapStatistics().heap_size_limit / 1024 / 1024)) * 1024 * 1024;
    this.readMemory();
    this.timer = setInterval(() => this.readMemory(), SAMPLE_MS);
    this.timer.unref();
  }

  /**
   * Reads resident memory. The read opens /proc/self/stat: with every file descriptor in use
   * (EMFILE, at the limit of `ulimit -n`) it fails. Then what V8 says it holds, which needs no
   * descriptor, stands in, but only upwards: memory is not believed to have gone down until a
   * read succeeds again, and memory that grows meanwhile is still seen (in the V8 heap, where
   * sessions and queues live).
   */
  readMemory(readRss: () => number = process.memoryUsage.rss): void {
    try {
      this.sample(readRss());
    } catch {
      const heap = getHeapStatistics();
      this.sample(Math.max(this.rss, heap.total_heap_size + heap.external_memory + heap.malloced_memory));
    }
  }

  /** Records a memory reading (the timer's; tests give their own). */
  sample(rssBytes: number): void {
    this.rss = rssBytes;
  }

  /** The memory limit in force, in bytes. */
  get memoryLimitBytes(): number {
    return this.memoryLimit;
  }

  /** Why the server takes no new session now; null when it does. */
  refusesSessions(): string | null {
    const { maxSessions } = this.options;
    if (maxSessions > 0 && this.sessionCount() >= maxSessions) return `at most ${maxSessions} sessions on this server`;
    return this.refusesPublishes();
  }

  /** Why the server takes no publish from clients now (memory past its watermark); null when it does. */
  refusesPublishes(): string | null {
    if (this.rss > this.memoryLimit) return `memory past its limit (${Math.round(this.rss / 1048576)} MB of ${Math.round(this.memoryLimit / 1048576)} MB)`;
    return null;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
