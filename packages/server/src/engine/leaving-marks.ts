/**
 * Presence grace marks kept in this process: the memory engine's, and the Redis engine's while
 * Redis is away. A mark says "this member just left this channel"; it expires on its own.
 */
import { randomBase64url } from '../security/random.js';

export class LeavingMarks {
  private readonly marks = new Map<string, { token: string; expiresAt: number }>();

  /** Sets the mark (replacing an older one); returns its token. */
  mark(channel: string, member: string, expiresAt: number, token = markToken()): string {
    this.marks.set(markKey(channel, member), { token, expiresAt });
    return token;
  }

  /** Removes the mark (with `token`: only that one); true when it was there and had not expired at `now`. */
  take(channel: string, member: string, now: number, token?: string): boolean {
    const key = markKey(channel, member);
    const mark = this.marks.get(key);
    if (mark === undefined || (token !== undefined && mark.token !== token)) return false;
    this.marks.delete(key);
    return mark.expiresAt > now;
  }

  /** Forgets the marks that expired (nobody took them: their member never came back). */
  sweep(now: number): void {
    for (const [key, mark] of this.marks) if (mark.expiresAt <= now) this.marks.delete(key);
  }
}

/** One key per (channel, member): JSON keeps any member id apart from the channel. */
export function markKey(channel: string, member: string): string {
  return JSON.stringify([channel, member]);
}

/** A mark's token: unique enough that two marks of one member never share it. */
export function markToken(): string {
  return randomBase64url(9);
}
