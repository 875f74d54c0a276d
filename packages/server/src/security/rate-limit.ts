/**
 * Token buckets: `rate` tokens per second up to `burst`. One per session for publishes, one per
 * remote address for handshakes. Idle buckets are full buckets, so they are forgotten.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(private readonly rate: number, private readonly burst: number, now = Date.now()) {
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one token; false when none is left. */
  take(now = Date.now()): boolean {
    return this.takeSome(1, now);
  }

  /**
   * Takes `count` tokens at once, or none; false when fewer are left. A count past the burst
   * costs the whole burst, so that it can pass once the bucket is full.
   */
  takeSome(count: number, now = Date.now()): boolean {
    this.refill(now);
    const cost = Math.min(count, this.burst);
    if (this.tokens < cost) return false;
    this.tokens -= cost;
    return true;
  }

  full(now = Date.now()): boolean {
    this.refill(now);
    return this.tokens >= this.burst;
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}

/** Buckets by key (a remote address), bounded: full buckets are swept every minute. */
export class KeyedLimiter {
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly rate: number, private readonly burst: number) {
    this.sweeper = setInterval(() => {
      for (const [key, bucket] of this.buckets) if (bucket.full()) this.buckets.delete(key);
    }, 60_000);
    this.sweeper.unref();
  }

  take(key: string): boolean {
    if (this.rate === 0) return true;
    let bucket = this.buckets.get(key);
    if (!bucket) this.buckets.set(key, (bucket = new TokenBucket(this.rate, this.burst)));
    return bucket.take();
  }

  stop(): void {
    clearInterval(this.sweeper);
  }
}
