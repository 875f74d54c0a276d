/**
 * One shared timer for every session deadline (held connects, session expiry, token expiry),
 * instead of a Node timer per session: thousands of idle sessions cost a Map entry each, and
 * nothing runs while nothing is due. Deadlines are rounded up to the next tick (`resolutionMs`),
 * so a deadline fires at most one tick late and never early. A cancelled deadline is removed at
 * once, so it holds no memory and never wakes the process.
 */
export interface TimerHandle {
  readonly due: number;
  cancelled: boolean;
}

interface Entry extends TimerHandle {
  tick: number;
  fn: () => void;
}

/** setTimeout turns longer delays into 1 ms (and warns); far deadlines re-arm in steps instead. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export class TimerWheel {
  private readonly buckets = new Map<number, Set<Entry>>();
  private timer: NodeJS.Timeout | null = null;
  private nextTick = Infinity;
  private size = 0;

  constructor(
    private readonly resolutionMs = 100,
    private readonly onError: (error: unknown) => void = (error) => console.error('timer callback failed', error),
    private readonly now: () => number = Date.now,
  ) {}

  schedule(delayMs: number, fn: () => void): TimerHandle {
    const due = this.now() + Math.max(0, delayMs);
    const tick = Math.ceil(due / this.resolutionMs);
    const entry: Entry = { due, tick, cancelled: false, fn };
    const bucket = this.buckets.get(tick);
    if (bucket) bucket.add(entry);
    else this.buckets.set(tick, new Set([entry]));
    this.size++;
    if (tick < this.nextTick) this.arm(tick);
    return entry;
  }

  cancel(handle: TimerHandle | null | undefined): void {
    if (!handle || handle.cancelled) return;
    handle.cancelled = true;
    this.size--;
    const entry = handle as Entry;
    const bucket = this.buckets.get(entry.tick);
    bucket?.delete(entry);
    if (bucket?.size === 0) this.buckets.delete(entry.tick);
  }

  /** The wheel's clock (ms since the epoch): deadlines kept elsewhere are measured on it. */
  time(): number {
    return this.now();
  }

  /** Number of live (not yet fired, not cancelled) deadlines. */
  get pending(): number {
    return this.size;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.nextTick = Infinity;
    this.buckets.clear();
    this.size = 0;
  }

  private arm(tick: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.nextTick = tick;
    const delay = Math.min(MAX_DELAY_MS, Math.max(0, tick * this.resolutionMs - this.now()));
    this.timer = setTimeout(() => this.fire(), delay);
    // Deadlines alone never keep the process alive: servers and sockets do.
    this.timer.unref();
  }

  private fire(): void {
    this.timer = null;
    this.nextTick = Infinity;
    const nowTick = Math.floor(this.now() / this.resolutionMs);
    const dueTicks = [...this.buckets.keys()].filter((t) => t <= nowTick).sort((a, b) => a - b);
    for (const tick of dueTicks) {
      const bucket = this.buckets.get(tick)!;
      this.buckets.delete(tick);
      for (const entry of bucket) {
        if (entry.cancelled) continue;
        entry.cancelled = true;
        this.size--;
        try {
          entry.fn();
        } catch (error) {
          // A failing callback must not starve the others due in the same tick.
          this.onError(error);
        }
      }
    }
    let earliest = Infinity;
    for (const tick of this.buckets.keys()) if (tick < earliest) earliest = tick;
    if (earliest !== Infinity) this.arm(earliest);
  }
}
