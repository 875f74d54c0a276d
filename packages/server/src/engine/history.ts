/**
 * Channel history for the memory engine: every broadcast channel that keeps history has an
 * epoch, the offset of its latest message, and the latest messages themselves (serialised, what
 * the subscribers were sent, kept as UTF-8 bytes: see ChannelLog), bounded by count and by age.
 *
 * Memory is bounded four ways: messages per channel (`size`), their age (`ttl`, pruned when the
 * channel is touched and by a periodic sweep), the number of channels remembered (`maxChannels`,
 * least recently used forgotten first), and the size of all kept messages together (`maxChars`,
 * the `maxHistoryBytes` option; the oldest messages of the least recently published channels are
 * dropped first). "Least recently published" is kept the way of the clock algorithm: a publish
 * only marks its channel, and a marked channel met at the old end of the order is moved to the
 * new end (its mark cleared) instead of losing anything, so a publish costs no reordering.
 *
 * What any client can make by subscribing to ever new names cannot push out the history of the
 * application's channels: a position given before any message is kept without a log, under a
 * bound of its own, and the logs of presence channels (a subscribe publishes a join) yield to
 * every other log.
 *
 * A forgotten channel starts again under a new epoch, so a client holding an old position is told
 * its recovery failed rather than being handed a stream with a silent hole in it.
 */
import type { Position } from '@perihelion/protocol';
import { newEpoch } from './position.js';

/** How much of one channel's history is kept. `size` 0: no history and no positions. */
export interface Retention {
  /** Most messages kept. */
  size: number;
  /** Longest a message is kept, in ms. */
  ttl: number;
  /**
   * Forgotten before the history of every channel that does not yield, when `maxChannels` are
   * kept: the presence channels, whose events any subscribe makes.
   */
  yields?: boolean;
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

/** No bytes yet: a log that keeps nothing holds no buffer. */
const NO_BYTES = Buffer.alloc(0);
/** The smallest buffer a log that keeps something gets, in bytes. */
const MIN_BYTES = 128;
/** Numbers kept per message in `entries`: its start in the buffer, its length in characters, its time. */
const STRIDE = 3;

/**
 * One channel's log. Offsets are contiguous: entry `i` (from `head`) has offset `first + i`.
 *
 * The kept messages are UTF-8 bytes in one buffer per channel, one after another, rather than
 * strings: a string kept for minutes survives every young-generation collection until V8 promotes
 * it, and those copies were most of the collection pauses of a busy server (each pause delays
 * every delivery behind it). A buffer's bytes live outside the V8 heap; what the heap holds per
 * message is three numbers in one array (one array, not three: a channel keeping a single
 * message, as a presence channel does, would hold three arrays' spare capacity). A read (a
 * recovery, the history API) decodes the messages it returns.
 */
export class ChannelLog {
  /** Offset of the latest message in this epoch; 0 before the first. */
  offset = 0;
  /** Length of the kept payloads together, in characters. */
  chars = 0;
  /** Published to since the store last passed it on its way to the least recently published. */
  recent = false;
  /** The kept messages' bytes: entry i spans start(i) to start(i + 1) (the last one, to `end`). */
  private bytes: Buffer = NO_BYTES;
  private end = 0;
  /** STRIDE numbers per message, entry after entry (numbers only: no object per message). */
  private entries: number[] = [];
  /** Entries before this one are dropped. */
  private head = 0;

  constructor(
    readonly epoch: string,
    readonly retention: Retention,
    /** The store-wide total this log's `chars` counts into. */
    private readonly totals: { chars: number } = { chars: 0 },
  ) {}

  /** Number of messages kept now. */
  get length(): number {
    return this.count - this.head;
  }

  /** Entries in `entries`, dropped ones included. */
  private get count(): number {
    return this.entries.length / STRIDE;
  }

  private start(i: number): number {
    return i < this.count ? this.entries[i * STRIDE]! : this.end;
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
    // Room for the worst case (3 bytes per UTF-16 unit) is checked without measuring the string.
    if (this.bytes.length - this.end < payload.length * 3) this.makeRoom(Buffer.byteLength(payload));
    this.entries.push(this.end, payload.length, now);
    this.end += this.bytes.write(payload, this.end, 'utf8');
    this.chars += payload.length;
    this.totals.chars += payload.length;
    if (this.length > this.retention.size) this.dropOldest(this.length - this.retention.size);
    this.prune(now);
  }

  /** Forgets messages older than the retention allows. */
  prune(now: number): void {
    const cutoff = now - this.retention.ttl;
    let stale = 0;
    while (this.head + stale < this.count && this.entries[(this.head + stale) * STRIDE + 2]! <= cutoff) stale++;
    if (stale > 0) this.dropOldest(stale);
  }

  /** The messages after `offset` (at most `limit`), or null when some of them are gone. */
  after(offset: number, limit: number): string[] | null {
    if (offset > this.offset || offset < this.first - 1) return null;
    const from = this.head + (offset + 1 - this.first);
    return this.decode(from, Math.min(this.count, from + limit));
  }

  /** The latest `limit` messages. */
  latest(limit: number): string[] {
    return this.decode(Math.max(this.head, this.count - limit), this.count);
  }

  /** Drops the `count` oldest messages (their positions can no longer be recovered). */
  dropOldest(count: number): void {
    let chars = 0;
    for (let i = this.head; i < this.head + count; i++) chars += this.entries[i * STRIDE + 1]!;
    this.chars -= chars;
    this.totals.chars -= chars;
    this.head += count;
    if (this.length === 0) {
      // Nothing kept: nothing held (a channel gone quiet keeps its position, not its buffer).
      this.bytes = NO_BYTES;
      this.end = 0;
      this.entries = [];
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.count) {
      // Compact once the dead prefix dominates, so memory stays proportional to what is kept.
      this.entries = this.entries.slice(this.head * STRIDE);
      this.head = 0;
    }
  }

  /** Messages `from` to `to` (entry indexes) as strings. */
  private decode(from: number, to: number): string[] {
    const out: string[] = [];
    for (let i = from; i < to; i++) out.push(this.bytes.toString('utf8', this.start(i), this.start(i + 1)));
    return out;
  }

  /**
   * Room for `size` more bytes: the kept bytes are moved to the start of the buffer (the dropped
   * ones before them are forgotten), into a new buffer when they would fill more than half of it
   * or take less than a quarter of it (so a burst's buffer is given back), else in place.
   */
  private makeRoom(size: number): void {
    if (this.end + size <= this.bytes.length) return;
    const keptFrom = this.start(this.head);
    const kept = this.end - keptFrom;
    const needed = kept + size;
    let target = this.bytes;
    if (needed * 2 > this.bytes.length || needed * 4 < this.bytes.length) {
      // Not from Node's shared pool: a channel's buffer must not keep other buffers' memory alive.
      // The first one fits (many channels keep one message: a presence event), later ones double.
      target = Buffer.allocUnsafeSlow(Math.max(MIN_BYTES, this.bytes.length === 0 ? needed : needed * 2));
    }
    if (kept > 0) this.bytes.copy(target, 0, keptFrom, this.end);
    this.bytes = target;
    this.end = kept;
    for (let i = this.head * STRIDE; i < this.entries.length; i += STRIDE) this.entries[i]! -= keptFrom;
  }
}

/**
 * Logs in the order the clock algorithm keeps them: least recently published first, but for the
 * logs marked `recent` (a Map keeps insertion order).
 */
class LogOrder {
  readonly logs = new Map<string, ChannelLog>();

  /**
   * The least recently published log (the map's first, once every marked log before it has been
   * moved to the end with its mark cleared: a second chance, as in the clock algorithm).
   */
  leastRecent(): [string, ChannelLog] {
    for (;;) {
      const first = this.logs.entries().next().value!;
      if (!first[1].recent) return first;
      this.moveToEnd(first[0], first[1]);
    }
  }

  moveToEnd(channel: string, log: ChannelLog): void {
    log.recent = false;
    this.logs.delete(channel);
    this.logs.set(channel, log);
  }
}

export class HistoryStore {
  /**
   * The logs of channels whose history yields (presence events), then of all others: when
   * `maxChannels` are kept, the first order gives up a log before the second does, so that what
   * any subscribe makes (a presence join) cannot push out the history of the application's
   * channels.
   */
  private readonly orders: readonly [LogOrder, LogOrder] = [new LogOrder(), new LogOrder()];
  /**
   * The epochs of channels given a position (by a subscribe) but not yet a message: no log, and a
   * bound of their own, `maxChannels`, the oldest forgotten first. Kept apart so that subscribes
   * to ever new names (which cost nothing else) cannot push out any channel's history; a client
   * whose such position was forgotten is told its recovery failed, as for a forgotten log.
   */
  private readonly unpublished = new Map<string, string>();
  private readonly noHistory = new Map<string, true>();
  /** Characters of every kept message together. */
  private readonly totals = { chars: 0 };

  constructor(
    private readonly settings: HistorySettings,
    private readonly now: () => number = Date.now,
  ) {}

  private find(channel: string): ChannelLog | undefined {
    return this.orders[1].logs.get(channel) ?? this.orders[0].logs.get(channel);
  }

  private logCount(): number {
    return this.orders[0].logs.size + this.orders[1].logs.size;
  }

  /** The retention of `channel`; null (remembered) when it keeps no history. */
  private retention(channel: string): Retention | null {
    if (this.noHistory.has(channel)) return null;
    const retention = this.settings.retentionFor(channel);
    if (retention.size > 0) return retention;
    // Remembered (bounded like the logs) so the rules are not matched on every publish.
    if (this.noHistory.size >= this.settings.maxChannels) this.noHistory.delete(this.noHistory.keys().next().value!);
    this.noHistory.set(channel, true);
    return null;
  }

  /** The log of `channel`, created if needed (under the epoch of its position, if it had one); null if it keeps no history. */
  log(channel: string, touch = false): ChannelLog | null {
    let log = this.find(channel);
    if (log) {
      if (touch) log.recent = true;
      return log;
    }
    const retention = this.retention(channel);
    if (!retention) return null;
    if (this.logCount() >= this.settings.maxChannels) {
      const order = this.orders[0].logs.size > 0 ? this.orders[0] : this.orders[1];
      const [oldest, forgotten] = order.leastRecent();
      order.logs.delete(oldest);
      this.totals.chars -= forgotten.chars;
    }
    const epoch = this.unpublished.get(channel);
    if (epoch !== undefined) this.unpublished.delete(channel);
    log = new ChannelLog(epoch ?? newEpoch(), retention, this.totals);
    this.orders[retention.yields ? 0 : 1].logs.set(channel, log);
    return log;
  }

  /** Records the message that got `log.next()`'s position, then keeps all history within `maxChars`. */
  append(log: ChannelLog, payload: string): void {
    log.append(payload, this.now());
    if (this.totals.chars <= this.settings.maxChars) return;
    // Oldest messages of the least recently published channels first (those that yield before
    // all others). A marked log is passed over once (moved to the end, unmarked), as is a log
    // emptied here, so that later trims do not walk past it again; a Map's iteration reaches
    // what was moved to its end.
    for (const order of this.orders) {
      for (const [channel, candidate] of order.logs) {
        if (candidate.recent) {
          order.moveToEnd(channel, candidate);
          continue;
        }
        while (candidate.length > 0 && this.totals.chars > this.settings.maxChars) candidate.dropOldest(1);
        if (this.totals.chars <= this.settings.maxChars) return;
        order.moveToEnd(channel, candidate);
      }
    }
  }

  /** Whether `channel` has a log, or was given a position (by a subscribe) that a client may recover from. */
  known(channel: string): boolean {
    return this.find(channel) !== undefined || this.unpublished.has(channel);
  }

  /** The current position of `channel` (made if needed); null if it keeps no history. */
  position(channel: string): Position | null {
    const log = this.find(channel);
    if (log) return log.position;
    let epoch = this.unpublished.get(channel);
    if (epoch === undefined) {
      if (!this.retention(channel)) return null;
      if (this.unpublished.size >= this.settings.maxChannels) this.unpublished.delete(this.unpublished.keys().next().value!);
      epoch = newEpoch();
      this.unpublished.set(channel, epoch);
    }
    return { epoch, offset: 0 };
  }

  /**
   * The messages a client that last saw `since` has missed, up to `limit`; null when they cannot
   * all be given (another epoch, pruned, more than `limit`, or a position from the future).
   */
  missedSince(channel: string, since: Position, limit: number): string[] | null {
    const log = this.find(channel);
    if (!log) return since.offset === 0 && this.unpublished.get(channel) === since.epoch ? [] : null;
    if (log.epoch !== since.epoch) return null;
    log.prune(this.now());
    if (log.offset - since.offset > limit) return null;
    return log.after(since.offset, limit);
  }

  /** A page of `channel`'s history; null if the channel keeps none. Reading creates nothing. */
  read(channel: string, query: HistoryQuery = {}): HistoryPage | null {
    const log = this.find(channel);
    if (!log) {
      if (this.noHistory.has(channel) || this.settings.retentionFor(channel).size === 0) return null;
      const epoch = this.unpublished.get(channel);
      const since = query.since;
      if (epoch === undefined) return { position: null, payloads: [], complete: since === undefined };
      return { position: { epoch, offset: 0 }, payloads: [], complete: since === undefined || (since.epoch === epoch && since.offset === 0) };
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
    for (const order of this.orders) for (const log of order.logs.values()) if (log.length > 0) log.prune(now);
  }

  /** Channels with a position (a log, or a position given before any message), messages and characters kept. */
  stats(): { channels: number; messages: number; chars: number } {
    let messages = 0;
    for (const order of this.orders) for (const log of order.logs.values()) messages += log.length;
    return { channels: this.logCount() + this.unpublished.size, messages, chars: this.totals.chars };
  }
}
