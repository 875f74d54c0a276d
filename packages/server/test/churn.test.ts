/**
 * Churn: about 1 600 raw clients (WebSocket, long-polling, SSE, HTTP streaming) connect, subscribe
 * (exact channels, wildcards, presence-bearing channels, presence watchers), receive, and leave in
 * waves for about 30 s: cleanly (/meta/disconnect), abruptly (a WebSocket destroyed mid-frame, a
 * held long-poll abandoned, a stream cut) or impatiently (a disconnect racing its own subscribe).
 * Subscribes are authorized by an asynchronous hook (as a database or a call-out would), so a
 * session can end while its subscribe is being checked.
 * Once the abandoned sessions have expired (maxInterval 1000, timeout 500), everything the server
 * keeps per session, per subscription, per address and per connection must be back to what it was
 * before the waves, and the heap within a stated tolerance of its baseline.
 *
 * Tolerances (stated here, asserted below):
 * - sessions, subscriptions (engine and per address), presence maps, timer-wheel deadlines, open
 *   streams and WebSockets, forwarding maps, HTTP connections, listeners: exactly the baseline;
 * - heap after a full GC: less than HEAP_TOLERANCE_MB above the baseline taken after a warm-up
 *   wave of the same mix (the history store and V8's code caches are full by then);
 * - at least MIN_RECEIVED_RATIO of the clients that subscribed received a message.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Server } from 'node:http';
import { coreOf, startServer, waitFor, type TestServer } from './helpers.js';
import { CHURN_LEAVES, CHURN_TRANSPORTS, churnChannels, churnClient, churnRound, type ChurnOutcome } from './churn-clients.js';

const TOTAL = 1600;
const WORKERS = 70;
const MAX_WAVES_MS = 40_000;
const HEAP_TOLERANCE_MB = 10;
const MIN_RECEIVED_RATIO = 0.9;
const API_KEY = 'churn-test-key-0123456789';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

async function fullGc(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return process.memoryUsage().heapUsed;
}

/** Everything the server keeps that should go back to its baseline, read from its internals. */
async function census(t: TestServer): Promise<Record<string, number>> {
  const core = coreOf(t.server);
  const presence = core.presence as unknown as Record<'joined' | 'local' | 'held' | 'steps', Map<string, unknown>>;
  const forwarding = core.forwarding as unknown as Record<'waiting' | 'lines' | 'remoteLines' | 'goneWatchers', Map<string, unknown>>;
  const engine = core.engine as unknown as { sessions: Map<string, unknown>; index: Record<'byPattern' | 'bySession', Map<string, unknown>> };
  const http = (t.server as unknown as { http: { websocket: { size: number }; streams: { size: number } } }).http;
  const owned = (t.server as unknown as { owned: Server }).owned;
  const connections = await new Promise<number>((resolve) => owned.getConnections((_, n) => resolve(n)));
  const events = core.events as unknown as NodeJS.EventEmitter;
  return {
    sessions: core.delivery.sessions.size,
    statsSessions: t.server.stats().sessions,
    engineChannels: (await core.engine.channels()).size,
    engineSessions: engine.sessions.size,
    engineByPattern: engine.index.byPattern.size,
    engineBySession: engine.index.bySession.size,
    sessionsFromAddress: core.delivery.countFrom('127.0.0.1'),
    subscriptionsFromAddress: core.delivery.subscriptionsFrom('127.0.0.1'),
    addresses: (core.delivery as unknown as { byAddress: Map<string, unknown> }).byAddress.size,
    presenceJoined: presence.joined.size,
    presenceLocal: presence.local.size,
    presenceHeld: presence.held.size,
    presenceSteps: presence.steps.size,
    timerWheel: core.wheel.pending,
    streams: http.streams.size,
    websockets: http.websocket.size,
    forwardingWaiting: forwarding.waiting.size,
    forwardingLines: forwarding.lines.size,
    forwardingRemoteLines: forwarding.remoteLines.size,
    forwardingGone: forwarding.goneWatchers.size,
    httpConnections: connections,
    listeners: events.eventNames().reduce((n, name) => n + events.listenerCount(name), 0),
  };
}

/** Runs `total` client lives over `workers` concurrent loops while a publisher ticks; returns their outcomes. */
async function waves(t: TestServer, total: number, workers: number, maxMs: number): Promise<ChurnOutcome[]> {
  const outcomes: ChurnOutcome[] = [];
  let started = 0;
  let tick = 0;
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      await churnRound((channel, data) => t.server.publish(channel, data), tick++);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  })();
  const deadline = Date.now() + maxMs;
  const worker = async (): Promise<void> => {
    while (started < total && Date.now() < deadline) {
      const n = started++;
      const transport = CHURN_TRANSPORTS[n % CHURN_TRANSPORTS.length]!;
      // Mostly clean and abrupt leaves; one in eight races its disconnect with its subscribe.
      const leave = n % 8 === 5 ? 'impatient' : CHURN_LEAVES[(n >> 2) % 2]!;
      outcomes.push(await churnClient(t.url, { transport, leave, channels: churnChannels(n), lifetimeMs: 300 + ((n * 7919) % 2200), unsubscribeFirst: n % 5 === 1 }));
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  publishing = false;
  await publisher;
  return outcomes;
}

describe('churn', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({
      maxInterval: 1000,
      timeout: 500,
      heartbeat: 2000,
      presenceGrace: 200,
      historySize: 50,
      maxSessionsPerIp: 0, maxWebsocketsPerIp: 0,
      apiKey: API_KEY,
      // Authorization that takes a moment (a database, a call-out): a session can end while one of
      // its subscribes is being checked, which the impatient clients make happen.
      open: false,
      authorize: async () => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        return true;
      },
    });
  });
  after(() => t.close());

  it(`${TOTAL} clients come and go on every transport; afterwards every per-session structure and the heap are back to baseline`, { timeout: 120_000 }, async () => {
    // Warm-up: the same mix, smaller; then the baseline once it has all expired.
    await waves(t, 200, 40, 15_000);
    const settle = async (): Promise<void> => {
      // Abandoned sessions expire after maxInterval (plus a tick); idle keep-alive HTTP
      // connections close after the server's keepAliveTimeout (5 s).
      await waitFor(() => t.server.stats().sessions === 0, 10_000, 'abandoned sessions to expire');
      await new Promise((resolve) => setTimeout(resolve, 5500));
    };
    await settle();
    const before = await census(t);
    const heapBefore = await fullGc();

    const started = Date.now();
    const outcomes = await waves(t, TOTAL, WORKERS, MAX_WAVES_MS);
    const elapsed = Date.now() - started;
    const peakDuring = t.server.stats().sessions;
    await settle();
    const afterCensus = await census(t);
    const heapAfter = await fullGc();

    const errors = outcomes.filter((o) => o.error !== null);
    const receiving = outcomes.filter((o) => o.received > 0).length;
    const rehandshakes = outcomes.reduce((n, o) => n + (o.rehandshakes ?? 0), 0);
    const subscribedLives = outcomes.length - Math.floor(outcomes.length / 8) - errors.length;
    const growthMb = (heapAfter - heapBefore) / 1048576;
    console.log(
      `churn: ${outcomes.length} clients in ${(elapsed / 1000).toFixed(1)} s (${errors.length} errors, ${receiving} received, ${rehandshakes} handshook again after expiring before their first connect), ` +
        `sessions at the end of the waves ${peakDuring}; heap ${(heapBefore / 1048576).toFixed(1)} MB → ${(heapAfter / 1048576).toFixed(1)} MB (${growthMb >= 0 ? '+' : ''}${growthMb.toFixed(2)} MB)`,
    );
    assert.ok(outcomes.length >= TOTAL * 0.9, `${outcomes.length} clients ran`);
    assert.deepEqual(errors.slice(0, 8).map((e) => e.error), [], `${errors.length} clients failed`);
    assert.ok(receiving >= subscribedLives * MIN_RECEIVED_RATIO, `${receiving} of ${subscribedLives} subscribed clients received`);
    assert.deepEqual(afterCensus, before, 'every per-session structure is back to its baseline');
    assert.equal(afterCensus.sessions, 0);
    assert.equal(afterCensus.engineChannels, 0);
    assert.ok(growthMb < HEAP_TOLERANCE_MB, `heap grew ${growthMb.toFixed(2)} MB (tolerance ${HEAP_TOLERANCE_MB} MB)`);

    // The operations endpoints say the same.
    const port = t.address.port;
    const stats = (await (await fetch(`http://127.0.0.1:${port}/api/stats`, { headers: { Authorization: `Bearer ${API_KEY}` } })).json()) as { sessions: number; sessionsByTransport: Record<string, number> };
    assert.equal(stats.sessions, 0);
    assert.deepEqual(stats.sessionsByTransport, {});
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const sessionLines = metrics.split('\n').filter((line) => line.startsWith('perihelion_sessions{') || line.startsWith('perihelion_sessions '));
    assert.ok(sessionLines.every((line) => Number(line.split(' ').pop()) === 0), sessionLines.join('\n'));
    const subscriptions = metrics.split('\n').find((line) => line.startsWith('perihelion_subscriptions '));
    assert.equal(Number(subscriptions?.split(' ').pop() ?? 0), 0, String(subscriptions));
  });
});
