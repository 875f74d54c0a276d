/**
 * The channels and patterns one session subscribes to (`Session.subscriptions`). Most sessions
 * subscribe to one: a `Set` of one member costs about 170 bytes, one per session, for as long as
 * it lives. This keeps the one member as a plain string and makes a `Set` only for a second one.
 * It is a `ReadonlySet` to applications (live: it changes as the session subscribes), not a `Set`.
 */
import { isWildcard } from '@perihelion/protocol';

export class ChannelSet implements ReadonlySet<string> {
  /** The one member while there is at most one, and no set. */
  private one: string | null = null;
  /** Every member, once there were two (kept, even if fewer remain). */
  private many: Set<string> | null = null;
  /** How many members are patterns (`*`, `**`). */
  private patterns = 0;

  /** Whether a member is a pattern: a channel it is not subscribed to by name may reach it. */
  get hasPattern(): boolean {
    return this.patterns > 0;
  }

  get size(): number {
    return this.many !== null ? this.many.size : this.one === null ? 0 : 1;
  }

  has(channel: string): boolean {
    return this.many !== null ? this.many.has(channel) : this.one === channel;
  }

  add(channel: string): this {
    if (this.has(channel)) return this;
    if (isWildcard(channel)) this.patterns++;
    if (this.many !== null) this.many.add(channel);
    else if (this.one === null) this.one = channel;
    else {
      this.many = new Set([this.one, channel]);
      this.one = null;
    }
    return this;
  }

  /** Removes `channel`; false when it was not a member. */
  delete(channel: string): boolean {
    if (this.many !== null ? !this.many.delete(channel) : this.one !== channel) return false;
    if (this.many === null) this.one = null;
    if (isWildcard(channel)) this.patterns--;
    return true;
  }

  clear(): void {
    this.one = null;
    this.many = null;
    this.patterns = 0;
  }

  forEach(callback: (value: string, key: string, set: ReadonlySet<string>) => void, thisArg?: unknown): void {
    for (const channel of this.members()) callback.call(thisArg, channel, channel, this);
  }

  // Iterating is rare (describing a session, an application looking): a set made for it is fine.
  values(): SetIterator<string> {
    return this.members().values();
  }

  keys(): SetIterator<string> {
    return this.members().keys();
  }

  entries(): SetIterator<[string, string]> {
    return this.members().entries();
  }

  [Symbol.iterator](): SetIterator<string> {
    return this.values();
  }

  private members(): ReadonlySet<string> {
    return this.many ?? new Set(this.one === null ? [] : [this.one]);
  }
}
