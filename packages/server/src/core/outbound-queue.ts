/**
 * A session's bounded outbound queue of serialised messages. The strings are shared between all
 * recipients of a publish (serialised once); the queue only holds references.
 *
 * Overflow policy (`drop-oldest`): when full, the oldest message is dropped and counted, so a
 * slow consumer costs at most `limit` references, and the newest state always gets through.
 */
export class OutboundQueue {
  private items: string[] = [];
  private head = 0;
  /** Messages dropped since the session began because the queue was full. */
  dropped = 0;
  /** When the oldest message still queued arrived (ms since the epoch), for latency metrics. */
  oldestAt = 0;

  constructor(readonly limit: number) {}

  get length(): number {
    return this.items.length - this.head;
  }

  /** Adds a message; returns false when an older message had to be dropped to make room. */
  push(payload: string): boolean {
    let kept = true;
    if (this.length >= this.limit) {
      this.head++;
      this.dropped++;
      kept = false;
      // Compact once the dead prefix dominates, so memory stays proportional to `limit`.
      if (this.head > this.limit) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
    }
    if (this.length === 0) this.oldestAt = Date.now();
    this.items.push(payload);
    return kept;
  }

  /** Removes and returns everything queued, oldest first. */
  drain(): string[] {
    const out = this.head === 0 ? this.items : this.items.slice(this.head);
    this.items = [];
    this.head = 0;
    return out;
  }
}
