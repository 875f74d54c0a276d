import { isWildcard, matchingPatterns } from '@perihelion/protocol';

/** What `match` returns when nobody is subscribed: shared, since callers only read it. */
const NOBODY: ReadonlySet<string> = new Set();

/**
 * Subscriptions by channel or pattern. A publish to `/a/b` is matched by looking up the
 * depth+1 keys that could match it (`/a/b`, `/a/*`, `/a/**`, `/**`), so matching costs the same
 * with ten subscriptions or a million. A session subscribed through several of those keys
 * is returned once (Bayeux: one copy per client). While no pattern has a wildcard, the channel
 * itself is the only key to look up.
 */
export class SubscriptionIndex {
  private readonly byPattern = new Map<string, Set<string>>();
  /**
   * Each session's patterns: the pattern itself while there is one (the usual case: a set of one
   * costs about 150 bytes more, per session), else a set.
   */
  private readonly bySession = new Map<string, string | Set<string>>();
  /** Keys of byPattern that are wildcard patterns. */
  private wildcards = 0;

  add(clientId: string, pattern: string): boolean {
    let sessions = this.byPattern.get(pattern);
    if (!sessions) {
      this.byPattern.set(pattern, (sessions = new Set()));
      if (isWildcard(pattern)) this.wildcards++;
    }
    if (sessions.has(clientId)) return false;
    sessions.add(clientId);
    const patterns = this.bySession.get(clientId);
    if (patterns === undefined) this.bySession.set(clientId, pattern);
    else if (typeof patterns === 'string') this.bySession.set(clientId, new Set([patterns, pattern]));
    else patterns.add(pattern);
    return true;
  }

  remove(clientId: string, pattern: string): boolean {
    const sessions = this.byPattern.get(pattern);
    if (!sessions?.delete(clientId)) return false;
    if (sessions.size === 0) {
      this.byPattern.delete(pattern);
      if (isWildcard(pattern)) this.wildcards--;
    }
    const patterns = this.bySession.get(clientId);
    if (patterns === pattern) this.bySession.delete(clientId);
    else if (typeof patterns === 'object' && patterns.delete(pattern) && patterns.size === 0) this.bySession.delete(clientId);
    return true;
  }

  removeSession(clientId: string): string[] {
    const patterns = this.bySession.get(clientId);
    if (patterns === undefined) return [];
    const removed = typeof patterns === 'string' ? [patterns] : [...patterns];
    for (const pattern of removed) this.remove(clientId, pattern);
    return removed;
  }

  /** The sessions a publish to `channel` reaches, each once. */
  match(channel: string): ReadonlySet<string> {
    if (this.wildcards === 0) return this.byPattern.get(channel) ?? NOBODY;
    const keys = matchingPatterns(channel);
    let only: Set<string> | undefined;
    let merged: Set<string> | undefined;
    for (const key of keys) {
      const sessions = this.byPattern.get(key);
      if (!sessions) continue;
      if (!only) only = sessions;
      else {
        if (!merged) merged = new Set(only);
        for (const id of sessions) merged.add(id);
      }
    }
    // The common case (one matching key) returns the live set without copying; callers only read it.
    return merged ?? only ?? NOBODY;
  }

  /** Which of `clientIds` subscribe to exactly `pattern`. */
  among(pattern: string, clientIds: readonly string[]): string[] {
    const sessions = this.byPattern.get(pattern);
    return sessions === undefined ? [] : clientIds.filter((clientId) => sessions.has(clientId));
  }

  subscribersOf(pattern: string): string[] {
    return [...(this.byPattern.get(pattern) ?? [])];
  }

  count(pattern: string): number {
    return this.byPattern.get(pattern)?.size ?? 0;
  }

  patterns(): Map<string, number> {
    const out = new Map<string, number>();
    for (const [pattern, sessions] of this.byPattern) out.set(pattern, sessions.size);
    return out;
  }

  subscriptionsOf(clientId: string): Iterable<string> {
    const patterns = this.bySession.get(clientId);
    return patterns === undefined ? [] : typeof patterns === 'string' ? [patterns] : patterns;
  }
}
