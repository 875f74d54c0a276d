/**
 * One copy of the strings many long-lived connections hold alike (a header value every browser of
 * one version sends, the path every client opens). Node makes a new string of each for every
 * request; a connection that keeps its request's facts for hours would keep its own copy.
 *
 * Bounded, since what it keeps comes from the network: values longer than `maxLength` are not
 * kept, and once `maxEntries` are, the table starts again (a client sending a new value each time
 * only stops others from sharing for a while). Keep nothing secret here: a value stays after the
 * connection that brought it has gone.
 */
export class SharedStrings {
  private readonly kept = new Map<string, string>();

  constructor(
    private readonly maxEntries = 4096,
    private readonly maxLength = 512,
  ) {}

  /** The one kept copy of `value` (or `value` itself, now kept; or, too long, not kept). */
  share(value: string): string {
    if (value.length > this.maxLength) return value;
    const kept = this.kept.get(value);
    if (kept !== undefined) return kept;
    if (this.kept.size >= this.maxEntries) this.kept.clear();
    this.kept.set(value, value);
    return value;
  }

  /** How many values are kept. */
  get size(): number {
    return this.kept.size;
  }
}
