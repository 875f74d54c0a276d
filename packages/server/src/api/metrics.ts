/**
 * Prometheus metrics at /metrics. Most values are read from the server's own counters when
 * scraped, so nothing is done per message for them; the delivery-latency histogram is observed
 * once per flush of a session (time from the oldest queued message to its write).
 */
import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { Counter, Gauge, Registry, type MetricObjectWithValues, type MetricValueWithName } from 'prom-client';
import type { ServerCore } from '../core/server.js';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * A histogram without labels whose `observe` is a few comparisons and two additions: it runs
 * once per session per flush, on the fan-out path, where prom-client's general Histogram (label
 * hashing, objects per call) cost a measurable share of the server's CPU. Registered in the
 * registry as a custom metric; prom-client renders it like any histogram.
 */
export class LatencyHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly counts = new Float64Array(LATENCY_BUCKETS.length + 1);
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  /** Observes `seconds` `times` times. */
  observe(seconds: number, times = 1): void {
    let i = 0;
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]!) i++;
    this.counts[i]! += times;
    this.sum += seconds * times;
    this.count += times;
  }

  get(): MetricObjectWithValues<MetricValueWithName<string>> {
    const values: MetricValueWithName<string>[] = [];
    let cumulative = 0;
    LATENCY_BUCKETS.forEach((le, i) => {
      cumulative += this.counts[i]!;
      values.push({ metricName: `${this.name}_bucket`, labels: { le }, value: cumulative });
    });
    values.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf' }, value: this.count });
    values.push({ metricName: `${this.name}_sum`, labels: {}, value: this.sum });
    values.push({ metricName: `${this.name}_count`, labels: {}, value: this.count });
    // prom-client prints `type` as given; its typings name the enum instead.
    return { name: this.name, help: this.help, type: 'histogram' as unknown as MetricObjectWithValues<MetricValueWithName<string>>['type'], aggregator: 'sum', collect: () => {}, values };
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
    this.marks.length = 0;
  }

  /** Copies of the bucket counts, taken by `recent()` at most once a second and kept 5 minutes. */
  private readonly marks: { at: number; counts: Float64Array }[] = [];

  /**
   * p50, p95 and p99 (ms) of the observations of about the last `windowMs`, interpolated within
   * buckets as Prometheus's histogram_quantile does. Nothing runs per observation: the window is
   * the difference between the counts now and a copy taken by an earlier call (one a second at
   * most), so the first call after a pause covers everything since the start (or the last reset).
   */
  recent(windowMs: number, now = Date.now()): LatencySummary {
    const window = Math.min(Math.max(windowMs, 0), MARKS_KEPT_MS);
    // The baseline: the newest copy at least `window` old, else the oldest one, else zero.
    let base: { at: number; counts: Float64Array } | undefined;
    for (const mark of this.marks) {
      if (mark.at <= now - window) base = mark;
      else break;
    }
    base ??= this.marks[0];
    const counts = this.counts.map((value, i) => value - (base?.counts[i] ?? 0));
    const last = this.marks.at(-1);
    if (!last || now - last.at >= 1000) this.marks.push({ at: now, counts: this.counts.slice() });
    while (this.marks.length > 2 && this.marks[1]!.at <= now - MARKS_KEPT_MS) this.marks.shift();
    let count = 0;
    for (const value of counts) count += value;
    const quantile = (q: number): number | null => {
      if (count === 0) return null;
      const rank = q * count;
      let below = 0;
      for (let i = 0; i < counts.length; i++) {
        const inBucket = counts[i]!;
        if (below + inBucket >= rank && inBucket > 0) {
          // Past the last bound (+Inf) the best estimate is that bound.
          if (i === LATENCY_BUCKETS.length) return LATENCY_BUCKETS[i - 1]! * 1000;
          const lower = i === 0 ? 0 : LATENCY_BUCKETS[i - 1]!;
          return (lower + (LATENCY_BUCKETS[i]! - lower) * ((rank - below) / inBucket)) * 1000;
        }
        below += inBucket;
      }
      return LATENCY_BUCKETS.at(-1)! * 1000;
    };
    return { windowMs: base ? now - base.at : null, count, p50: quantile(0.5), p95: quantile(0.95), p99: quantile(0.99) };
  }
}

const MARKS_KEPT_MS = 300_000;

/** Delivery latency over a recent window (see `Perihelion.latency()`). */
export interface LatencySummary {
  /** The span covered, ms; null when it is everything since the server started. */
  windowMs: number | null;
  /** Session flushes observed in it. */
  count: number;
  /** Quantiles in ms; null when nothing was observed. */
  p50: number | null;
  p95: number | null;
  p99: number | null;
}

/** The histogram the core observes on every flush of a session (see ServerCore's `observeDelivery`). */
export function deliveryLatency(): LatencyHistogram {
  return new LatencyHistogram('perihelion_delivery_latency_seconds', 'Time a message waited in a session queue before it was written.');
}

export class Metrics {
  readonly registry = new Registry();

  constructor(server: Pick<ServerCore, 'engine' | 'delivery'>, latency: LatencyHistogram) {
    const registry = this.registry;
    const totals = server.delivery.counters;
    new Gauge({
      name: 'perihelion_sessions',
      help: 'Live sessions by the connection type of their latest connect.',
      labelNames: ['transport'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [transport, count] of Object.entries(server.delivery.stats().sessionsByTransport)) this.set({ transport }, count);
      },
    });
    new Gauge({
      name: 'perihelion_subscriptions',
      help: 'Subscriptions (session × channel or pattern).',
      registers: [registry],
      async collect() {
        let total = 0;
        for (const count of (await server.engine.channels()).values()) total += count;
        this.set(total);
      },
    });
    new Gauge({
      name: 'perihelion_history_messages',
      help: 'Messages kept in channel histories for recovery.',
      registers: [registry],
      async collect() {
        this.set((await server.engine.historyStats()).messages);
      },
    });
    new Gauge({
      name: 'perihelion_history_channels',
      help: 'Channels whose history (or position) is kept.',
      registers: [registry],
      async collect() {
        this.set((await server.engine.historyStats()).channels);
      },
    });
    // Counters mirror the server's totals: each scrape adds what happened since the last one.
    const mirrored: [name: string, help: string, read: () => number][] = [
      ['perihelion_messages_in_total', 'Messages received from clients.', () => totals.messagesIn],
      ['perihelion_messages_published_total', 'Messages published to broadcast channels.', () => totals.published],
      ['perihelion_deliveries_total', 'Messages queued for sessions (one per recipient).', () => totals.deliveries],
      ['perihelion_queue_drops_total', 'Messages dropped because a session queue was full.', () => totals.queueDrops],
      ['perihelion_slow_consumers_total', 'Sessions ended because their queue overflowed (queueOverflow "disconnect").', () => totals.slowConsumers],
      ['perihelion_duplicate_publishes_total', 'Resent publishes recognised by their id and not published again.', () => totals.duplicatePublishes],
      ['perihelion_replayed_total', 'Messages replayed from history to recovering clients.', () => totals.replayed],
      ['perihelion_resent_total', 'Messages written again for the CometD ack extension.', () => totals.resent],
      ['perihelion_websocket_reads_paused_total', 'Times a WebSocket was not read for a while because maxPendingFrames of its frames waited to be handled, or the replies to them could not be sent.', () => totals.readsPaused],
      ['perihelion_websockets_refused_total', 'WebSocket upgrades refused (429) because maxWebsocketsPerIp were open from their address.', () => totals.websocketsRefused],
      ['perihelion_past_browser_limit_total', 'Long-polls answered at once (with the multiple-clients advice) and streams refused (429) because their browser held maxSessionsPerBrowser lines already.', () => totals.pastBrowserLimit],
    ];
    const { engine } = server;
    if (engine.nodeMailStats) {
      mirrored.push(
        ['perihelion_node_messages_stored_total', 'Messages for another node sent by way of a Redis key, past nodeMessageInlineBytes (replies to requests that landed on another node, relayed state snapshots): many say the balancer should keep clients on their node.', () => engine.nodeMailStats!().stored],
        ['perihelion_node_messages_lost_total', 'Messages from another node sent by way of a Redis key that this node could not take (expired, or Redis away).', () => engine.nodeMailStats!().lost],
      );
    }
    for (const [name, help, read] of mirrored) {
      let seen = 0;
      new Counter({
        name,
        help,
        registers: [registry],
        collect() {
          const now = read();
          if (now > seen) this.inc(now - seen);
          seen = now;
        },
      });
    }
    registry.registerMetric(latency as never);
    processGauges(registry);
  }
}

/**
 * The process's descriptors and memory, read at each scrape (nothing runs between scrapes), under
 * the names Prometheus client libraries give them. Every connection is a descriptor: open ones
 * flat at the maximum mean new clients are being refused (README, "Open files"). Linux only for
 * descriptors (/proc); elsewhere those two are left out.
 */
function processGauges(registry: Registry): void {
  /** The soft limit of descriptors; the last one read when it cannot be read now (none left to read it with). */
  let lastMax: number | null = null;
  const limits = (): number | null => {
    try {
      const soft = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
      if (soft !== undefined) lastMax = Number(soft);
    } catch {
      // Kept: the last reading.
    }
    return lastMax;
  };
  if (limits() !== null) {
    new Gauge({
      name: 'process_max_fds',
      help: 'Most open file descriptors this process may have (its soft limit).',
      registers: [registry],
      collect() {
        const max = limits();
        if (max !== null) this.set(max);
      },
    });
    new Gauge({
      name: 'process_open_fds',
      help: 'Open file descriptors (every connection is one).',
      registers: [registry],
      // Listed off the event loop: with 20 000 connections a synchronous listing took 20 ms, a
      // pause every delivery would wait behind at each scrape.
      async collect() {
        try {
          this.set((await readdir('/proc/self/fd')).length);
        } catch (error) {
          // Listing them takes a descriptor too: with none left, they are all in use.
          const max = (error as NodeJS.ErrnoException).code === 'EMFILE' ? limits() : null;
          if (max !== null) this.set(max);
        }
      },
    });
  }
  new Gauge({
    name: 'process_resident_memory_bytes',
    help: 'Resident memory size in bytes.',
    registers: [registry],
    collect() {
      try {
        this.set(process.memoryUsage.rss());
      } catch {
        // Unreadable while descriptors are exhausted: the previous value stands.
      }
    },
  });
}
