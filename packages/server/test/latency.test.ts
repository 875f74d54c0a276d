/** server.latency(): delivery-latency quantiles over a recent window, from the /metrics histogram. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { LatencyHistogram } from '../src/api/metrics.js';
import { createServer } from '../src/index.js';

function near(actual: number | null, expected: number, message?: string): void {
  assert.ok(actual !== null && Math.abs(actual - expected) < 1e-9, `${message ?? ''} ${actual} ≉ ${expected}`);
}

describe('delivery latency over a recent window', () => {
  it('interpolates quantiles within buckets, in ms', () => {
    const histogram = new LatencyHistogram('test_latency', 'test');
    assert.deepEqual(histogram.recent(10_000, 0), { windowMs: null, count: 0, p50: null, p95: null, p99: null });
    // 100 observations in the (1 ms, 2.5 ms] bucket: p50 is half-way through it.
    for (let i = 0; i < 100; i++) histogram.observe(0.002);
    const summary = histogram.recent(10_000, 1000);
    assert.equal(summary.count, 100);
    near(summary.p50, 1.75, 'p50');
    near(summary.p95, 1 + 1.5 * 0.95, 'p95');
    near(summary.p99, 1 + 1.5 * 0.99, 'p99');
  });

  it('counts only what came after a copy at least the window old', () => {
    const histogram = new LatencyHistogram('test_latency', 'test');
    for (let i = 0; i < 50; i++) histogram.observe(2); // slow, long ago
    histogram.recent(10_000, 0); // a copy at t=0
    histogram.recent(10_000, 5_000); // and one at t=5 s
    for (let i = 0; i < 10; i++) histogram.observe(0.0001); // fast, recent
    const a = histogram.recent(10_000, 12_000);
    // The newest copy at least 10 s old is the one at t=0: only the 10 fast ones are in.
    assert.equal(a.count, 10);
    assert.equal(a.windowMs, 12_000);
    near(a.p99, 0.5 * 0.99, 'all in the first bucket (0, 0.5 ms]');
    // At t=16 s the baseline is the copy at t=5 s, still before the fast ones.
    assert.equal(histogram.recent(10_000, 16_000).count, 10);
    // At t=40 s the baseline is the copy at t=16 s: nothing since.
    assert.deepEqual(histogram.recent(10_000, 40_000), { windowMs: 24_000, count: 0, p50: null, p95: null, p99: null });
  });

  it('gives the largest bound for observations past it, and keeps copies for 5 minutes at most', () => {
    const histogram = new LatencyHistogram('test_latency', 'test');
    histogram.observe(100);
    near(histogram.recent(10_000, 0).p50, 30_000);
    for (let t = 1000; t <= 900_000; t += 1000) histogram.recent(10_000, t);
    const marks = (histogram as unknown as { marks: unknown[] }).marks;
    assert.ok(marks.length <= 302, `${marks.length} copies kept`);
  });

  it('observes a run of equal waits with their count', () => {
    const inRuns = new LatencyHistogram('test_latency', 'test');
    inRuns.observe(0.003, 4);
    inRuns.observe(0.2);
    const oneByOne = new LatencyHistogram('test_latency', 'test');
    for (const seconds of [0.003, 0.003, 0.003, 0.003, 0.2]) oneByOne.observe(seconds);
    const summary = inRuns.recent(10_000, 0);
    assert.equal(summary.count, 5);
    assert.deepEqual(summary, oneByOne.recent(10_000, 0));
    near(summary.p50, 2.5 + 2.5 * (2.5 / 4), 'p50: half-way through the five, in the (2.5 ms, 5 ms] bucket');
  });

  it('server.latency() counts one observation per session written, a fan-out to many in one flush included', async () => {
    const server = createServer({ pingInterval: 0 });
    try {
      const robots = Array.from({ length: 7 }, () => server.localClient());
      let received = 0;
      for (const robot of robots) await robot.subscribe('/fan', () => received++);
      const before = server.latency().count;
      await server.publish('/fan', { one: 1 });
      while (received < robots.length) await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(server.latency().count - before, robots.length);
    } finally {
      await server.close();
    }
  });

  it('server.latency() reports the deliveries to sessions', async () => {
    const server = createServer({ pingInterval: 0 });
    try {
      const robot = server.localClient();
      const received: unknown[] = [];
      await robot.subscribe('/news', (data) => received.push(data));
      for (let i = 0; i < 5; i++) await server.publish('/news', { i });
      while (received.length < 5) await new Promise((resolve) => setTimeout(resolve, 5));
      const summary = server.latency();
      assert.ok(summary.count >= 1, `count ${summary.count}`);
      assert.ok(summary.p50 !== null && summary.p50 >= 0 && summary.p99! >= summary.p50);
    } finally {
      await server.close();
    }
  });
});
