/**
 * Channel history for the memory engine: every broadcast channel that keeps history has an
 * epoch, the offset of its latest message, and the latest messages themselves (serialised, the
 * same strings the subscribers were sent), bounded by count and by age.
 *
 * Memory is bounded four ways: messages per channel (`size`), their age (`ttl`, pruned when the
 * channel is touched and by a periodic sweep), the number of channels remembered (`maxChannels`,
 * least recently used forgotten first), and the size of all kept messages together (`maxChars`,
 * the `maxHistoryBytes` option; the oldest messages of the least recently published channels are
 * dropped first). A forgotten channel starts again under a new epoch, so a client holding an old
 * position is told its recovery failed rather than being handed a stream with a silent hole in it.
 */
import type { Position } from '@perihelion/protocol';
import { newEpoch } from './position.js';

/** How much of one channel's history is kept. `size` 0: no history and no positions. */
export interface Retention {
  /** Most messages kept. */
  size: number;
  /** Longest a message is kept, in ms. */
  ttl: number;
}

export interface HistorySettings {
  /** The retention of a channel, asked once when the channel is first seen. */
  retentionFor(channel: string): Retention;
  /** Most channels whose history (or at least whose position) is remembered. */
  maxChannels: number;
  /** Most characters of all kept messages together (serialised JSON; about one byte each for ASCII). */
  maxChars: number;
}

/** What a history read returns. */
export interface HistoryPage {
  /** The channel's current epoch and the offset of its latest message; null if nothing was published yet. */
  position: Position | null;
  /** Serialised messages, oldest first. */
  payloads: string[];
  /**
   * False when `since` could not be honoured: its epoch is not the current one, or messages
   * after it are no longer kept. Nothing is returned then.
   */
  complete: boolean;
}

export interface HistoryQuery {
  /** Only messages after this position (at most `limit`, oldest first); else the latest `limit`. */
  since?: Position;
  limit?: number;
}

interface Entry {
  at: number;
  payload: string;
}

/** One channel's log. Offsets are contiguous: entry `i` (from `head`) has offset `first + i`. */
export class ChannelLog {
  /** Offset of the latest message in this epoch; 0 before the first. */
  offset = 0;
  /** Length of the kept payloads together. */
  chars = 0;
  private entries: Entry[] = [];
  private head = 0;

  constructor(
    readonly epoch: string,
    readonly retention: Retention,
    /** The store-wide total this log's `chars` counts into. */
    private readonly totals: { chars: number } = { chars: 0 },
  ) {}

  /** Number of messages kept now. */
  get length(): number {
    return this.entries.length - this.head;
  }

  /** Offset of the oldest message kept (offset + 1 when none is kept). */
  get first(): number {
    return this.offset - this.length + 1;
  }

  get position(): Position {
    return { epoch: this.epoch, offset: this.offset };
  }

  /** The position the next message will get. */
  next(): Position {
    return { epoch: this.epoch, offset: this.offset + 1 };
  }

  /** Records the message that got `next()`'s position. */
  append(payload: string, now: number): void {
    this.offset++;
    this.entries.push({ at: now, payload });
    this.chars += payload.length;
    this.totals.chars += payload.length;
    if (this.length > this.retention.size) this.dropOldest(this.length - this.retention.size);
    this.prune(now);
  }

  /** Forgets messages older than the retention allows. */
  prune(now: number): void {
    const cutoff = now - this.retention.ttl;
    let stale = 0;
    while (this.head + stale < this.entries.length && this.entries[this.head + stale]!.at <= cutoff) stale++;
    if (stale > 0) this.dropOldest(stale);
  }

  /** The messages after `offset` (at most `limit`), or null when some of them are gone. */
  after(offset: number, limit: number): string[] | null {
    if (offset > this.offset || offset < this.first - 1) return null;
    const from = this.head + (offset + 1 - this.first);
    return this.slice(from, Math.min(this.entries.length, from + limit));
  }

  /** The latest `limit` messages. */
  latest(limit: number): string[] {
    return this.slice(Math.max(this.head, this.entries.length - limit), this.entries.length);
  }

  private slice(from: number, to: number): string[] {
    const out: string[] = [];
    for (let i = from; i < to; i++) out.push(this.entries[i]!.payload);
    return out;
  }

  /** Drops the `count` oldest messages (their positions can no longer be recovered). */
  dropOldest(count: number): void {
    let chars = 0;
    for (let i = this.head; i < this.head + count; i++) chars += this.entries[i]!.payload.length;
    this.chars -= chars;
    this.totals.chars -= chars;
    this.head += count;
    // Compact once the dead prefix dominates, so memory stays proportional to what is kept.
    if (this.head > 64 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
  }
}

export class HistoryStore {
  /** Least recently published first (a Map keeps insertion order; a publish re-inserts). */
  private readonly logs = new Map<string, ChannelLog>();
  private readonly noHistory = new Map<string, true>();
  /** Characters of every kept message together. */
  private readonly totals = { chars: 0 };

  constructor(
    private readonly settings: HistorySettings,
    private readonly now: () => number = Date.now,
  ) {}

  /** The log of `channel`, created (with a new epoch) if needed; null if it keeps no history. */
  log(channel: string, touch = false): ChannelLog | null {
    let log = this.logs.get(channel);
    if (log) {
      if (touch) {
        this.logs.delete(channel);
        this.logs.set(channel, log);
      }
      return log;
    }
    if (this.noHistory.has(channel)) return null;
    const retention = this.settings.retentionFor(channel);
    if (retention.size === 0) {
      // Remembered (bounded like the logs) so the rules are not matched on every publish.
      if (this.noHistory.size >= this.settings.maxChannels) this.noHistory.delete(this.noHistory.keys().next().value!);
      this.noHistory.set(channel, true);
      return null;
    }
    if (this.logs.size >= this.settings.maxChannels) {
      const [oldest, forgotten] = this.logs.entries().next().value!;
      this.logs.delete(oldest);
      this.totals.chars -= forgotten.chars;
    }
    log = new ChannelLog(newEpoch(), retention, this.totals);
    this.logs.set(channel, log);
    return log;
  }

  /** Records the message that got `log.next()`'s position, then keeps all history within `maxChars`. */
  append(log: ChannelLog, payload: string): void {
    log.append(payload, this.now());
    if (this.totals.chars <= this.settings.maxChars) return;
    // Oldest messages of the least recently published channels first; the channel just
    // published to is last in the map. A log emptied here moves to the end, so that later
    // trims do not walk past it again.
    for (const [channel, candidate] of this.logs) {
      while (candidate.length > 0 && this.totals.chars > this.settings.maxChars) candidate.dropOldest(1);
      if (this.totals.chars <= this.settings.maxChars) return;
      if (candidate !== log) {
        this.logs.delete(channel);
        this.logs.set(channel, candidate);
      }
    }
  }

  /** The current position of `channel` (its log created if needed); null if it keeps no history. */
  position(channel: string): Position | null {
    return this.log(channel)?.position ?? null;
  }

  /**
   * The messages a client that last saw `since` has missed, up to `limit`; null when they cannot
   * all be given (another epoch, pruned, more than `limit`, or a position from the future).
   */
  missedSince(channel: string, since: Position, limit: number): string[] | null {
    const log = this.logs.get(channel);
    if (!log || log.epoch !== since.epoch) return null;
    log.prune(this.now());
    if (log.offset - since.offset > limit) return null;
    return log.after(since.offset, limit);
  }

  /** A page of `channel`'s history; null if the channel keeps none. Reading creates nothing. */
  read(channel: string, query: HistoryQuery = {}): HistoryPage | null {
    const log = this.logs.get(channel);
    if (!log) {
      if (this.noHistory.has(channel) || this.settings.retentionFor(channel).size === 0) return null;
      return { position: null, payloads: [], complete: query.since === undefined };
    }
    log.prune(this.now());
    const limit = query.limit ?? log.retention.size;
    if (!query.since) return { position: log.position, payloads: log.latest(limit), complete: true };
    const payloads = query.since.epoch === log.epoch ? log.after(query.since.offset, limit) : null;
    return { position: log.position, payloads: payloads ?? [], complete: payloads !== null };
  }

  /** Prunes every channel by age; the memory engine calls it now and then. */
  sweep(): void {
    const now = this.now();
    for (const log of this.logs.values()) if (log.length > 0) log.prune(now);
  }

  stats(): { channels: number; messages: number; chars: number } {
    let messages = 0;
    for (const log of this.logs.values()) messages += log.length;
    return { channels: this.logs.size, messages, chars: this.totals.chars };
  }
}
