/**
 * Exponential backoff with full jitter: the delay before attempt n is uniform in
 * [0, min(max, min·2ⁿ)] (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
 * Jitter spreads the reconnects of thousands of clients that lost the same server at the same
 * moment, so they do not all come back in the same millisecond. The server's `advice.interval`
 * is a floor the client never goes under.
 */
export function backoff(attempt: number, min: number, max: number, floor = 0, random: () => number = Math.random): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.max(floor, Math.floor(random() * ceiling));
}
