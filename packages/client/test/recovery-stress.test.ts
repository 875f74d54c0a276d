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
      // Set once the test is over, passed or not: the publisher stops too.
      let over = false;
      try {
        const received: number[] = [];
        const failed: string[] = [];
        await c.subscribe<number>('/stress', (n) => received.push(n), { onRecover: (ok, outcome) => void (ok || failed.push(JSON.stringify(outcome))) });
        let published = 0;
        let cuts = 0;
        // The publisher's end, published all or failed. The line is cut until everything is
        // published and it was cut at least ten times; a failed publish stops the cuts, and the
        // test fails by its error rather than cutting for ever.
        let publishing: 'on' | 'done' | 'failed' = 'on';
        // Where the publisher is, for the message of a run that stalls.
        let publisherAt = 'starting';
        const publisher = (async () => {
          while (!over && published < TOTAL) {
            // About 2 000 messages a second, and never more than 1 000 between two cuts: the
            // stream is cut at random points within it. Once all are out, nothing is left to space
            // out: the publisher ends, and the cut loop makes up any of the ten cuts still due.
            publisherAt = 'publishing';
            for (let i = 0; i < 10 && published < TOTAL; i++) await test.server.publish('/stress', published++);
            publisherAt = 'pausing';
            await sleep(5);
            publisherAt = 'waiting for a cut';
            while (!over && published < TOTAL && published >= (cuts + 1) * 1000) await sleep(5);
          }
          publisherAt = 'done';
        })();
        publisher.then(
          () => (publishing = 'done'),
          () => (publishing = 'failed'),
        );
        const sessions = new Set<string>();
        // Ten cuts take a few seconds: a minute means something is stuck, and says what.
        const stallAfter = Date.now() + 60_000;
        while (publishing === 'on' || (publishing === 'done' && cuts < 10)) {
          if (Date.now() > stallAfter) {
            const stats = test.server.stats();
            assert.fail(`stalled: ${published} published (${publisherAt}) after ${cuts} cuts; ${received.length} received; the client ${c.state} over ${c.transport}; the server holds ${stats.sessions} sessions, ${stats.deliveries} deliveries, ${stats.queueDrops} dropped`);
          }
          await sleep(30 + Math.random() * 120);
          if (c.clientId) sessions.add(c.clientId);
          net.cut();
          cuts++;
          // Mostly short cuts; now and then one longer than maxInterval, which ends the session.
          await sleep(Math.random() < 0.15 ? 1300 : 10 + Math.random() * 80);
          net.restore();
        }
        await publisher;
        await waitFor(() => received.length >= TOTAL, 60_000, () => `all ${TOTAL} messages (have ${received.length})`);
        await sleep(200);
        if (c.clientId) sessions.add(c.clientId);
        assert.ok(cuts >= 10, `the line was cut ${cuts} times`);
        assert.deepEqual(failed, [], 'every recovery succeeded');
        assert.equal(received.length, TOTAL, `no duplicate (${received.length} received)`);
        const firstWrong = received.findIndex((value, i) => value !== i);
        assert.equal(firstWrong, -1, `in order (first wrong at ${firstWrong}: ${received[firstWrong]})`);
        t.diagnostic(`${cuts} cuts, ${sessions.size} sessions`);
      } finally {
        over = true;
        await c.disconnect();
        await test.close();
      }
    });
  }
});
