/**
 * Faults with third-party clients: the CometD client with its AckExtension (over long-polling and
 * over WebSocket) and the Faye Node client (over WebSocket and long-polling), all behind one TCP
 * proxy (fault-proxy.ts) that at random delays, truncates, resets and blackholes their connections,
 * while the server publishes a numbered sequence on one channel.
 *
 * What is asserted (and documented in RELIABILITY.md):
 * - every client keeps or regains its subscription: it receives the last messages, published
 *   after the faults stop (CometD subscribes again in a /meta/handshake listener, as its
 *   documentation recommends; Faye subscribes again by itself);
 * - CometD with the ack extension loses nothing, as long as its session survives (the outages
 *   here are shorter than maxInterval): every number, once, in order, over long-polling and over
 *   WebSocket alike (its messages travel only in /meta/connect replies, each reply a batch that is
 *   received whole or written again whole);
 * - Faye has no acknowledgement: what a cut or silent line carried is lost. Its losses, and the
 *   messages it received out of order (after a reconnection, a few older messages can arrive after
 *   newer ones), are counted and reported, not asserted.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { adapt } from 'cometd-nodejs-client';
import { AckExtension, CometD, type Message as CometDMessage } from 'cometd';
import faye from 'faye';
import { startServer, waitFor, type TestServer } from './helpers.js';
import { FaultProxy, seeded } from './fault-proxy.js';

adapt();

const CHANNEL = '/faults/seq';
const RATE = 100; // messages per second
// The short form runs in `npm test`; FAULTS_SECONDS=600 runs the long form locally.
const CHAOS_MS = Number(process.env.FAULTS_SECONDS ?? 20) * 1000;
const TAIL = 20; // published after the faults stop: proves every client is subscribed again
const SEED = Number(process.env.FAULTS_SEED ?? 20_261_204);

interface Received {
  name: string;
  values: number[];
  handshakes: number;
}

/** A CometD client with the AckExtension that subscribes in its /meta/handshake listener. */
function cometdClient(url: string, transport: 'long-polling' | 'websocket'): { cometd: CometD; received: Received } {
  const cometd = new CometD();
  if (transport === 'long-polling') cometd.unregisterTransport('websocket');
  // Quick retries, and a dead line noticed within the hold plus 1.5 s instead of 10 s.
  cometd.configure({ url, logLevel: 'warn', backoffIncrement: 50, maxBackoff: 500, maxNetworkDelay: 1500 });
  cometd.registerExtension('ack', new AckExtension());
  const received: Received = { name: `CometD ${transport} + ack`, values: [], handshakes: 0 };
  cometd.addListener('/meta/handshake', (reply: CometDMessage) => {
    if (!reply.successful) return;
    received.handshakes++;
    // The CometD client drops its subscriptions on every new handshake: make them here.
    cometd.subscribe(CHANNEL, (message: CometDMessage) => void received.values.push(message.data as number));
  });
  cometd.handshake();
  return { cometd, received };
}

function fayeClient(url: string, transport: 'websocket' | 'long-polling'): { client: faye.Client; received: Received } {
  const client = new faye.Client(url, { timeout: 3, retry: 0.2 });
  if (transport === 'long-polling') client.disable('websocket');
  const received: Received = { name: `Faye ${transport}`, values: [], handshakes: 0 };
  client.addExtension({
    incoming(message, next) {
      if (message.channel === '/meta/handshake' && message.successful) received.handshakes++;
      next(message);
    },
  });
  client.subscribe(CHANNEL, (data) => void received.values.push(data as number));
  return { client, received };
}

/** Sorted numbers as ranges: "3-7, 12". */
function ranges(values: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < values.length; ) {
    let j = i;
    while (j + 1 < values.length && values[j + 1] === values[j]! + 1) j++;
    out.push(i === j ? `${values[i]}` : `${values[i]}-${values[j]}`);
    i = j + 1;
  }
  return out.join(', ');
}

/** Distinct values in arrival order, and how many arrivals repeated one. */
function analyse(values: readonly number[]): { distinct: number[]; duplicates: number; backwards: number; examples: string[] } {
  const seen = new Set<number>();
  const distinct: number[] = [];
  const examples: string[] = [];
  let duplicates = 0;
  let backwards = 0;
  for (const v of values) {
    if (seen.has(v)) {
      duplicates++;
      continue;
    }
    if (distinct.length > 0 && v < distinct[distinct.length - 1]!) {
      backwards++;
      if (examples.length < 5) examples.push(`${v} after ${distinct[distinct.length - 1]}`);
    }
    seen.add(v);
    distinct.push(v);
  }
  return { distinct, duplicates, backwards, examples };
}

describe('third-party clients behind a faulty network', () => {
  let t: TestServer;
  let proxy: FaultProxy;
  const stops: (() => Promise<unknown>)[] = [];

  before(async () => {
    // Holds of 2 s so that a blackholed connect is noticed within seconds; sessions live 15 s
    // without a connect, longer than any outage here (a blackhole is dropped after 4 s).
    t = await startServer({ timeout: 2000, maxInterval: 15_000, maxQueue: 10_000, maxSessionsPerIp: 0, maxWebsocketsPerIp: 0 });
    proxy = await FaultProxy.start(t.address.port, { blackholeMs: 4000 });
  });
  after(async () => {
    await Promise.all(stops.map((stop) => Promise.race([stop().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000))])));
    await proxy.close();
    await t.close();
  });

  it('CometD with the ack extension loses nothing and Faye counts its losses, both keep their subscriptions, across delays, truncations, resets and blackholes', { timeout: CHAOS_MS + 85_000 }, async () => {
    const url = `http://127.0.0.1:${proxy.port}${t.server.options.path}`;
    const cometLp = cometdClient(url, 'long-polling');
    const cometWs = cometdClient(url, 'websocket');
    const fayeWs = fayeClient(url, 'websocket');
    const fayeLp = fayeClient(url, 'long-polling');
    stops.push(
      () => new Promise((resolve) => cometLp.cometd.disconnect(resolve)),
      () => new Promise((resolve) => cometWs.cometd.disconnect(resolve)),
      async () => fayeWs.client.disconnect(),
      async () => fayeLp.client.disconnect(),
    );
    const all = [cometLp.received, cometWs.received, fayeWs.received, fayeLp.received];
    // Everyone subscribed: a probe reaches them all.
    await waitFor(() => t.server.stats().sessions === 4, 10_000, 'four sessions');
    await waitFor(() => (t.server as unknown as { engine: { subscriberCount?: unknown } }) !== null && all.every((r) => r.handshakes >= 1), 10_000, 'handshakes');
    let probe = -1;
    await waitFor(
      () => {
        void t.server.publish(CHANNEL, probe--);
        return all.every((r) => r.values.some((v) => v < 0));
      },
      10_000,
      'every client subscribed',
    );
    for (const r of all) r.values.length = 0;
    const handshakesBefore = all.map((r) => r.handshakes);

    const random = seeded(SEED);
    proxy.startChaos({ delay: 4, truncate: 2, reset: 2, blackhole: 1 }, 150, 450, random);
    let published = 0;
    const chaosEnd = Date.now() + CHAOS_MS;
    while (Date.now() < chaosEnd) {
      for (let i = 0; i < RATE / 20; i++) await t.server.publish(CHANNEL, published++);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    proxy.stopChaos();
    const chaosTotal = published;
    // Faults over, their last effects too (a blackhole lasts 4 s, a truncation waits for its
    // chunk): the tail, on healthy lines, proves every client is subscribed again. Published
    // earlier, it could go into a line about to fail, which Faye, without acknowledgements, loses.
    await waitFor(() => proxy.settled, 15_000, 'the last faults to end');
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (let i = 0; i < TAIL; i++) await t.server.publish(CHANNEL, published++);
    const last = published - 1;
    // A client whose line died last may still be waiting out its retry backoff, longer on a
    // loaded machine: a generous wait.
    await waitFor(() => all.every((r) => r.values.includes(last)), 60_000, () => `the last message at every client: ${all.map((r) => `${r.name} ${r.values.length}${r.values.includes(last) ? '' : ' (not the last yet)'}`).join(', ')}`);
    await new Promise((resolve) => setTimeout(resolve, 500));

    const report = all.map((r, i) => {
      const { distinct, duplicates, backwards, examples } = analyse(r.values.filter((v) => v >= 0));
      const lost = published - distinct.length;
      const have = new Set(distinct);
      const missing = Array.from({ length: published }, (_, k) => k).filter((v) => !have.has(v));
      return { name: r.name, received: r.values.length, distinct: distinct.length, duplicates, backwards, examples, lost, missing: ranges(missing), rehandshakes: r.handshakes - handshakesBefore[i]!, tailComplete: Array.from({ length: TAIL }, (_, k) => chaosTotal + k).every((v) => distinct.includes(v)) };
    });
    console.log(`faults (seed ${SEED}): ${published} published over ${CHAOS_MS / 1000} s; proxy ${JSON.stringify(proxy.counts)}, ${proxy.opened} connections`);
    for (const r of report) console.log(`  ${r.name}: ${r.distinct} of ${published} (lost ${r.lost}), ${r.duplicates} duplicates, ${r.backwards} out of order, ${r.rehandshakes} new handshakes`);

    assert.ok(proxy.counts.reset + proxy.counts.truncate + proxy.counts.blackhole >= 20, `faults inflicted: ${JSON.stringify(proxy.counts)}`);
    for (const r of report) assert.ok(r.tailComplete, `${r.name} is subscribed again after the faults (every message published after them)`);
    for (const r of report.slice(0, 2)) {
      assert.equal(r.backwards, 0, `${r.name}: in order (${r.examples.join(', ')})`);
      // At-least-once holds within a session; a new session (none expected here) would start afresh.
      assert.equal(r.rehandshakes, 0, `${r.name} kept its session`);
      assert.equal(r.lost, 0, `${r.name} lost nothing (missing ${r.missing})`);
      assert.equal(r.duplicates, 0, `${r.name}: exactly once`);
    }
  });
});
