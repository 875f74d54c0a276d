/**
 * One shared timer for every session deadline (held connects, session expiry, token expiry),
 * instead of a Node timer per session: thousands of idle sessions cost a Map entry each, and
 * nothing runs while nothing is due. Deadlines are rounded up to the next tick (`resolutionMs`),
 * so a deadline fires at most one tick late and never early. A cancelled deadline is removed at
 * once, so it holds no memory.
 *
 * The ticks that have deadlines are kept in a heap, soonest first: tokens that expire over hours
 * give a tick of their own to many sessions (up to one per 100 ms), and finding what is due among
 * them costs a logarithm, not a walk over all of them at every tick.
 */
export interface TimerHandle {
  /** When it is due, on the wheel's clock (`time()`). */
  readonly due: number;
  cancelled: boolean;
}

interface Entry extends TimerHandle {
  tick: number;
  fn: (target: unknown) => void;
  /** What `fn` is called with: a caller with a deadline per object passes one shared function, not a closure per object. */
  target: unknown;
}

/** setTimeout turns longer delays into 1 ms (and warns); far deadlines re-arm in steps instead. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export class TimerWheel {
  private readonly buckets = new Map<number, Set<Entry>>();
  /**
   * The ticks of `buckets`, a binary heap, soonest first. A tick whose bucket its cancels emptied
   * stays until it comes up (or the heap is rebuilt), and one emptied and filled again is here
   * twice: each is skipped when it finds no bucket.
   */
  private ticks: number[] = [];
  private timer: NodeJS.Timeout | null = null;
  private nextTick = Infinity;
  private size = 0;

  /**
   * Where the wheel's clock starts. Its times are small integers, which V8 keeps in the objects
   * that hold them (times since the epoch are too large: each would be a number object of its
   * own, and every session holds some). They stay small for the first 24 days of a server's life
   * (2^31 ms, on Node's usual 64-bit build); later ones are number objects again, as correct.
   */
  private readonly origin: number;

  constructor(
    private readonly resolutionMs = 100,
    private readonly onError: (error: unknown) => void = (error) => console.error('timer callback failed', error),
    private readonly now: () => number = Date.now,
  ) {
    this.origin = now();
  }

  /** Calls `fn` (with `target`, when given) once `delayMs` have passed, within one tick. */
  schedule(delayMs: number, fn: () => void): TimerHandle;
  schedule<T>(delayMs: number, fn: (target: T) => void, target: T): TimerHandle;
  schedule(delayMs: number, fn: (target: unknown) => void, target?: unknown): TimerHandle {
    const due = this.time() + Math.max(0, delayMs);
    const tick = Math.ceil(due / this.resolutionMs);
    const entry: Entry = { due, tick, cancelled: false, fn, target };
    const bucket = this.buckets.get(tick);
    if (bucket) bucket.add(entry);
    else {
      this.buckets.set(tick, new Set([entry]));
      this.pushTick(tick);
    }
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

  /** The wheel's clock (ms since the wheel was made): deadlines kept elsewhere are measured on it. */
  time(): number {
    // (Math.floor: a difference of two large numbers is a number object even when it is whole,
    // and a field that once held one holds every later value so.)
    return Math.floor(this.now() - this.origin);
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
    this.ticks = [];
    this.size = 0;
  }

  private arm(tick: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.nextTick = tick;
    const delay = Math.min(MAX_DELAY_MS, Math.max(0, tick * this.resolutionMs - this.time()));
    this.timer = setTimeout(() => this.fire(), delay);
    // Deadlines alone never keep the process alive: servers and sockets do.
    this.timer.unref();
  }

  private fire(): void {
    this.timer = null;
    this.nextTick = Infinity;
    const nowTick = Math.floor(this.time() / this.resolutionMs);
    // What is due now, in order; a deadline its callbacks schedule for now waits for the next fire.
    const dueTicks: number[] = [];
    while (this.ticks.length > 0 && this.ticks[0]! <= nowTick) dueTicks.push(this.popTick());
    for (const tick of dueTicks) {
      const bucket = this.buckets.get(tick);
      if (!bucket) continue;
      this.buckets.delete(tick);
      for (const entry of bucket) {
        if (entry.cancelled) continue;
        entry.cancelled = true;
        this.size--;
        try {
          entry.fn(entry.target);
        } catch (error) {
          // A failing callback must not starve the others due in the same tick.
          this.onError(error);
        }
      }
    }
    while (this.ticks.length > 0 && !this.buckets.has(this.ticks[0]!)) this.popTick();
    if (this.ticks.length > 0) this.arm(this.ticks[0]!);
  }

  private pushTick(tick: number): void {
    // Ticks of emptied buckets pile up while deadlines are cancelled and set again (a session's
    // expiry at every connect): past twice the live ones, the heap is made again from the buckets.
    if (this.ticks.length > 2 * this.buckets.size + 64) {
      this.ticks = [...this.buckets.keys()].sort((a, b) => a - b);
      return;
    }
    const heap = this.ticks;
    let i = heap.push(tick) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent]! <= tick) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = tick;
  }

  private popTick(): number {
    const heap = this.ticks;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= heap.length) break;
        const child = left + 1 < heap.length && heap[left + 1]! < heap[left]! ? left + 1 : left;
        if (heap[child]! >= last) break;
        heap[i] = heap[child]!;
        i = child;
      }
      heap[i] = last;
    }
    return top;
  }
}
