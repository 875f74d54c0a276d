/**
 * Presence grace marks kept in this process: the memory engine's, and the Redis engine's while
 * Redis is away. A mark says "this member just left this channel"; it expires on its own.
 */
export class LeavingMarks {
  private readonly expiries = new Map<string, number>();

  mark(channel: string, member: string, expiresAt: number): void {
    this.expiries.set(markKey(channel, member), expiresAt);
  }

  /** Removes the mark; true when it was there and had not expired at `now`. */
  take(channel: string, member: string, now: number): boolean {
    const key = markKey(channel, member);
    const expiresAt = this.expiries.get(key);
    if (expiresAt === undefined) return false;
    this.expiries.delete(key);
    return expiresAt > now;
  }

  /** Forgets the marks that expired (nobody took them: their member never came back). */
  sweep(now: number): void {
    for (const [key, expiresAt] of this.expiries) if (expiresAt <= now) this.expiries.delete(key);
  }
}

/** One key per (channel, member): JSON keeps any member id apart from the channel. */
export function markKey(channel: string, member: string): string {
  return JSON.stringify([channel, member]);
}
