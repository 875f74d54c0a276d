/**
 * Nothing missed, the hard way: 10 000 messages published while the client's network is cut at
 * random moments, again and again. Whatever each cut loses (a frame on a dying socket, a poll
 * response aborted in flight, a whole session), the client must end with every message exactly
 * once and in order, by itself.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ConnectionType } from '@perihelion/protocol';
import { client, Net, sleep, startServer, waitFor } from './helpers.js';

const TOTAL = 10_000;

describe('recovery under random cuts', () => {
  for (const type of ['websocket', 'long-polling'] as ConnectionType[]) {
    it(`${type}: 10 000 messages, the line cut at random moments, every message once and in order`, { timeout: 120_000 }, async (t) => {
      // Sessions expire quickly, so that some cuts cost the session itself (recovery in a new one)
      // and others only the line (the same session resumes).
      const test = await startServer({ historySize: TOTAL, maxQueue: TOTAL, maxInterval: 1000, timeout: 2000 });
      const net = new Net();
      const c = client(test.url, { transports: [type] }, net);
      try {
        const received: number[] = [];
        const failed: string[] = [];
        await c.subscribe<number>('/stress', (n) => received.push(n), { onRecover: (ok, outcome) => void (ok || failed.push(JSON.stringify(outcome))) });
        let published = 0;
        let cuts = 0;
        // Set when the publisher ends, published all or failed: the cuts stop either way, and a
        // failure is this test's, by its error, rather than a loop cutting for ever.
        let publisherEnded = false;
        const publisher = (async () => {
          while (published < TOTAL) {
            // About 2 000 messages a second, and never more than 1 000 between two cuts: the
            // stream is cut at least ten times, at random points within it.
            for (let i = 0; i < 10 && published < TOTAL; i++) await test.server.publish('/stress', published++);
            await sleep(5);
            while (published >= (cuts + 1) * 1000) await sleep(5);
          }
        })().finally(() => (publisherEnded = true));
        const sessions = new Set<string>();
        while (published < TOTAL && !publisherEnded) {
          await sleep(30 + Math.random() * 120);
          if (c.clientId) sessions.add(c.clientId);
          net.cut();
          cuts++;
          // Mostly short cuts; now and then one longer than maxInterval, which ends the session.
          await sleep(Math.random() < 0.15 ? 1300 : 10 + Math.random() * 80);
          net.restore();
        }
        await publisher;
        await waitFor(() => received.length >= TOTAL, 60_000, `all ${TOTAL} messages (have ${received.length})`);
        await sleep(200);
        if (c.clientId) sessions.add(c.clientId);
        assert.ok(cuts >= 10, `the line was cut ${cuts} times`);
        assert.deepEqual(failed, [], 'every recovery succeeded');
        assert.equal(received.length, TOTAL, `no duplicate (${received.length} received)`);
        const firstWrong = received.findIndex((value, i) => value !== i);
        assert.equal(firstWrong, -1, `in order (first wrong at ${firstWrong}: ${received[firstWrong]})`);
        t.diagnostic(`${cuts} cuts, ${sessions.size} sessions`);
      } finally {
        await c.disconnect();
        await test.close();
      }
    });
  }
});
