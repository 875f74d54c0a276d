/**
 * A session's bounded outbound queue of serialised messages. The strings are shared between all
 * recipients of a publish (serialised once); the queue only holds references.
 *
 * Overflow: when full, the oldest message is dropped and counted (the server may instead end the
 * session, see the `queueOverflow` option), so a slow consumer costs at most `limit` references.
 * Messages replayed for a recovery or resent for the ack extension are bounded by the history
 * and the unacknowledged window instead: they are queued in full and widen the limit until they
 * have been written, so that a recovery never drops the very messages it recovers.
 */
export class OutboundQueue {
  private items: string[] = [];
  private head = 0;
  /** Messages dropped since the session began because the queue was full. */
  dropped = 0;
  /** When the oldest message still queued arrived (ms since the epoch), for latency metrics. */
  oldestAt = 0;
  /** Replayed or resent messages still queued, on top of `limit`. */
  private allowance = 0;

  constructor(readonly limit: number) {}

  get length(): number {
    return this.items.length - this.head;
  }

  /** Whether the next `push` would drop a message. */
  get full(): boolean {
    return this.length >= this.limit + this.allowance;
  }

  /**
   * Adds a message; returns false when an older message had to be dropped to make room. `now`
   * (ms since the epoch) is the caller's clock: a publish to many sessions reads it once.
   */
  push(payload: string, now = Date.now()): boolean {
    let kept = true;
    if (this.full) {
      this.head++;
      this.dropped++;
      kept = false;
      // Compact once the dead prefix dominates, so memory stays proportional to `limit`.
      if (this.head > this.limit) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
    }
    if (this.length === 0) this.oldestAt = now;
    this.items.push(payload);
    return kept;
  }

  /** Removes the queued messages `drop` accepts, keeping the others in order. */
  removeWhere(drop: (payload: string) => boolean): void {
    if (this.length === 0) return;
    const kept = this.items.slice(this.head).filter((payload) => !drop(payload));
    this.items = kept;
    this.head = 0;
  }

  /** Queues replayed messages after what is queued, all of them. */
  pushAll(payloads: readonly string[]): void {
    if (payloads.length === 0) return;
    if (this.length === 0) this.oldestAt = Date.now();
    for (const payload of payloads) this.items.push(payload);
    this.allowance += payloads.length;
  }

  /** Queues resent messages before what is queued, all of them. */
  unshiftAll(payloads: readonly string[]): void {
    if (payloads.length === 0) return;
    if (this.length === 0) this.oldestAt = Date.now();
    this.items = [...payloads, ...this.items.slice(this.head)];
    this.head = 0;
    this.allowance += payloads.length;
  }

  /**
   * Removes and returns the one message queued: the usual case of a flush (one publish since the
   * last), which then needs no array. Only valid when `length` is 1.
   */
  takeOnly(): string {
    // pop() keeps the array for the next message (a new array, or length = 0, costs far more).
    const payload = this.items.pop()!;
    if (this.head > 0) {
      this.items = [];
      this.head = 0;
    }
    this.allowance = 0;
    return payload;
  }

  /** Removes and returns everything queued, oldest first. */
  drain(): string[] {
    const out = this.head === 0 ? this.items : this.items.slice(this.head);
    this.items = [];
    this.head = 0;
    this.allowance = 0;
    return out;
  }
}
