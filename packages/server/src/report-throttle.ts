/** How often one kind of failure is reported at most. */
export const REPORT_EVERY_MS = 10_000;

/**
 * At most one report of a kind of failure per `everyMs`, saying how many there were since the
 * last: a flood of one failure (connections refused at the descriptor limit, requests refused
 * while the engine is away) does not flood the log too. The first is reported at once.
 */
export class ReportThrottle {
  private lastReport = -Infinity;
  private unreported = 0;

  constructor(
    private readonly everyMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Counts one failure; answers how many to report now (this one included), or 0 to stay quiet. */
  count(): number {
    this.unreported++;
    const now = this.now();
    if (now - this.lastReport < this.everyMs) return 0;
    this.lastReport = now;
    const count = this.unreported;
    this.unreported = 0;
    return count;
  }

  /** The failures counted and not reported yet (0: none); the next is reported at once. */
  flush(): number {
    const count = this.unreported;
    this.unreported = 0;
    this.lastReport = -Infinity;
    return count;
  }
}
