/**
 * Prometheus metrics at /metrics. Most values are read from the server's own counters when
 * scraped, so nothing is done per message for them; the delivery-latency histogram is observed
 * once per flush of a session (time from the oldest queued message to its write).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BayeuxServer } from '../core/server.js';

export class Metrics {
  readonly registry = new Registry();
  readonly deliveryLatency: Histogram;

  constructor(server: BayeuxServer) {
    const registry = this.registry;
    new Gauge({
      name: 'perihelion_sessions',
      help: 'Live sessions by the connection type of their latest connect.',
      labelNames: ['transport'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [transport, count] of Object.entries(server.stats().sessionsByTransport)) this.set({ transport }, count);
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
      ['perihelion_messages_in_total', 'Messages received from clients.', () => server.totals().messagesIn],
      ['perihelion_messages_published_total', 'Messages published to broadcast channels.', () => server.totals().published],
      ['perihelion_deliveries_total', 'Messages queued for sessions (one per recipient).', () => server.totals().deliveries],
      ['perihelion_queue_drops_total', 'Messages dropped because a session queue was full.', () => server.totals().queueDrops],
      ['perihelion_slow_consumers_total', 'Sessions ended because their queue overflowed (queueOverflow "disconnect").', () => server.totals().slowConsumers],
      ['perihelion_duplicate_publishes_total', 'Resent publishes recognised by their id and not published again.', () => server.totals().duplicatePublishes],
      ['perihelion_replayed_total', 'Messages replayed from history to recovering clients.', () => server.totals().replayed],
      ['perihelion_resent_total', 'Messages written again for the CometD ack extension.', () => server.totals().resent],
    ];
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
    this.deliveryLatency = new Histogram({
      name: 'perihelion_delivery_latency_seconds',
      help: 'Time a message waited in a session queue before it was written.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    });
  }
}
