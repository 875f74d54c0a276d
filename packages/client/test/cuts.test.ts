/**
 * The client behind a TCP proxy that cuts its connections as a network does: closed with a FIN,
 * reset with an RST, or gone silent (nothing forwarded, nothing closed). Over every transport
 * Node can use, the client must notice, reconnect by itself and recover what the dying line
 * swallowed: every message exactly once, in order.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket as WS } from 'ws';
import type { ConnectionType } from '@perihelion/protocol';
import { Client, type ClientOptions } from '../src/index.js';
import { eventSourceOver, sleep, startServer, TcpProxy, waitFor, type TestServer } from './helpers.js';

const TYPES: ConnectionType[] = ['websocket', 'eventsource', 'http-streaming', 'long-polling'];
/** The server's hold (advice.timeout) and the client's allowance beyond it (lineTimeout). */
const HOLD = 2000;
const LINE_TIMEOUT = 1500;

interface Setup {
  test: TestServer;
  proxy: TcpProxy;
  client: Client;
  received: number[];
  unrecovered: string[];
}

/**
 * A server, a proxy in front of it, and a client on `type` through the proxy, subscribed to
 * `channel`. The server holds connects for HOLD ms, or its default (30 s) with `hold: "default"`.
 */
async function setUp(type: ConnectionType, channel: string, total: number, options: ClientOptions = {}, hold: number | 'default' = HOLD): Promise<Setup> {
  // heartbeat 1000: an idle stream carries a byte at least every 2 s, within HOLD + LINE_TIMEOUT.
  const test = await startServer({ historySize: total, maxQueue: total, heartbeat: 1000, ...(hold === 'default' ? {} : { timeout: hold }) });
  const proxy = await TcpProxy.start(test.port);
  const client = new Client(proxy.url(test.server.options.path), {
    transports: [type],
    WebSocket: WS as unknown as new (url: string) => WebSocket,
    EventSource: eventSourceOver(fetch),
    minReconnectDelay: 20,
    maxReconnectDelay: 200,
    timeout: LINE_TIMEOUT,
    ...options,
  });
  const received: number[] = [];
  const unrecovered: string[] = [];
  await client.subscribe<number>(channel, (n) => received.push(n), { onRecover: (ok, outcome) => void (ok || unrecovered.push(JSON.stringify(outcome))) });
  assert.equal(client.transport, type);
  return { test, proxy, client, received, unrecovered };
}

async function tearDown({ test, proxy, client }: Setup): Promise<void> {
  await client.disconnect();
  await proxy.close();
  await test.close();
}

function assertExactlyOnceInOrder(received: number[], total: number): void {
  assert.equal(received.length, total, `no message lost or doubled (${received.length} received of ${total})`);
  const firstWrong = received.findIndex((value, i) => value !== i);
  assert.equal(firstWrong, -1, `in order (first wrong at ${firstWrong}: ${received[firstWrong]})`);
}

describe('cut connections (a TCP proxy that closes, resets or silences them)', () => {
  for (const type of TYPES) {
    for (const how of ['FIN', 'RST'] as const) {
      it(`${type}: one cut with ${how} under the server's default 30 s hold is repaired at once, and what the dying line carried arrives`, { timeout: 20_000 }, async (t) => {
        const setup = await setUp(type, '/once', 10, {}, 'default');
        const { test, proxy, client, received } = setup;
        try {
          await test.server.publish('/once', 0);
          await waitFor(() => received.length === 1, 3000, 'the first message');
          await sleep(100);
          const cutAt = Date.now();
          let back: number | undefined;
          client.on('connected', () => (back ??= Date.now() - cutAt));
          assert.ok(how === 'FIN' ? proxy.end() : proxy.reset(), 'a connection to cut');
          // Published as the line dies, and nothing after it: no later message reveals a gap.
          await test.server.publish('/once', 1);
          await waitFor(() => back !== undefined, 3000, 'the reconnection');
          await waitFor(() => received.length === 2, 3000, 'the message published during the cut');
          await sleep(100);
          assertExactlyOnceInOrder(received, 2);
          assert.ok(back! < 1500, `connected again after ${back} ms`);
          t.diagnostic(`connected again after ${back} ms`);
        } finally {
          await tearDown(setup);
        }
      });
    }
  }

  it('websocket: a network down for a moment (every connection refused) keeps the session, its transport and every message', { timeout: 20_000 }, async () => {
    const setup = await setUp('websocket', '/blip', 20);
    const { test, proxy, client, received } = setup;
    try {
      await test.server.publish('/blip', 0);
      await waitFor(() => received.length === 1, 3000, 'the first message');
      const session = client.clientId;
      assert.ok(proxy.outage(600) > 0, 'a connection to cut');
      for (let n = 1; n < 10; n++) await test.server.publish('/blip', n);
      await waitFor(() => received.length === 10, 5000, 'every message after the outage');
      assertExactlyOnceInOrder(received, 10);
      assert.equal(client.clientId, session, 'the same session: no new handshake');
      assert.equal(client.transport, 'websocket', 'still over WebSocket');
    } finally {
      await tearDown(setup);
    }
  });

  const TOTAL = 3000;
  for (const type of TYPES) {
    it(`${type}: ${TOTAL} messages while every connection is cut at random with FIN or RST, each once and in order`, { timeout: 30_000 }, async (t) => {
      const setup = await setUp(type, '/cuts', TOTAL, {}, 'default');
      const { test, proxy, client, received, unrecovered } = setup;
      try {
        const reasons = new Set<string>();
        client.on('connecting', (change) => reasons.add(change.reason.replace(/\d+/g, 'N')));
        let published = 0;
        const publisher = (async () => {
          // About 1 000 messages a second, for 3 s: a cut every 40 to 160 ms falls into them.
          const deadline = Date.now() + 20_000;
          while (published < TOTAL && Date.now() < deadline) {
            for (let i = 0; i < 10 && published < TOTAL; i++) await test.server.publish('/cuts', published++);
            await sleep(10);
          }
        })();
        const cuts = { fin: 0, rst: 0, connections: 0 };
        for (let round = 0; round < 500 && published < TOTAL; round++) {
          await sleep(40 + Math.random() * 120);
          const fin = Math.random() < 0.5;
          const cut = fin ? proxy.end() : proxy.reset();
          if (cut > 0) cuts[fin ? 'fin' : 'rst']++;
          cuts.connections += cut;
        }
        await publisher;
        assert.equal(published, TOTAL, 'everything was published');
        await waitFor(() => received.length >= TOTAL, 15_000, () => `all ${TOTAL} messages (have ${received.length})`);
        await sleep(200);
        assertExactlyOnceInOrder(received, TOTAL);
        assert.deepEqual(unrecovered, [], 'every recovery succeeded');
        assert.ok(cuts.fin >= 3 && cuts.rst >= 3, `cut with FIN ${cuts.fin} times, with RST ${cuts.rst} times`);
        assert.equal(client.state, 'connected');
        assert.equal(client.transport, type);
        t.diagnostic(`${cuts.fin} FIN and ${cuts.rst} RST cuts of ${cuts.connections} connections (${proxy.opened} opened); reasons: ${[...reasons].join(' | ')}`);
      } finally {
        await tearDown(setup);
      }
    });
  }

  /**
   * Silences connections (all, or only the stream's) with 50 messages already received, publishes
   * 50 more into the dead line, and checks that the client noticed within its deadline, came back
   * and got all of them and 50 more, once each and in order. Returns why it left `connected`.
   */
  async function silentLine(t: { diagnostic(message: string): void }, type: ConnectionType, which?: (request: string) => boolean, options: ClientOptions = {}): Promise<string> {
    const setup = await setUp(type, '/silent', 150, options);
    const { test, proxy, client, received, unrecovered } = setup;
    try {
      for (let n = 0; n < 50; n++) await test.server.publish('/silent', n);
      await waitFor(() => received.length === 50, 5000, 'the first 50 messages');
      // Let the line settle into its steady state (a held connect, an idle stream).
      await sleep(300);
      let noticed: number | undefined;
      let reason = '';
      client.once('connecting', (change) => {
        noticed = Date.now() - since;
        reason = change.reason;
      });
      const silenced = proxy.silence(which);
      const since = Date.now();
      assert.ok(silenced > 0, 'a connection to silence');
      // Written into the dead line: the server takes them as sent.
      for (let n = 50; n < 100; n++) await test.server.publish('/silent', n);
      const deadline = HOLD + LINE_TIMEOUT;
      await waitFor(() => noticed !== undefined, deadline + 1000, () => `the client to notice the silence (deadline ${deadline} ms)`);
      await waitFor(() => client.state === 'connected', 20_000, 'the reconnection');
      // Nothing published since: only a recovery brings back what the dead line swallowed.
      await waitFor(() => received.length >= 100, 10_000, () => `the 50 messages sent into the dead line (have ${received.length - 50})`);
      for (let n = 100; n < 150; n++) await test.server.publish('/silent', n);
      await waitFor(() => received.length >= 150, 10_000, () => `all 150 messages (have ${received.length})`);
      await sleep(200);
      assertExactlyOnceInOrder(received, 150);
      assert.deepEqual(unrecovered, []);
      assert.ok(noticed! <= deadline + 500, `noticed after ${noticed} ms (deadline ${deadline} ms)`);
      t.diagnostic(`${silenced} connections silenced; noticed after ${noticed} ms (${reason})`);
      return reason;
    } finally {
      await tearDown(setup);
    }
  }

  // lineTimeout defaults to `timeout` (LINE_TIMEOUT here): a held connect, a stream or the
  // keep-alive connect of a streamed type notices, whichever comes first.
  for (const type of TYPES) {
    it(`${type}: every connection gone silent is noticed within the server's hold plus lineTimeout, replaced, and nothing is lost`, { timeout: 40_000 }, async (t) => {
      await silentLine(t, type);
    });
  }

  const stream = (request: string): boolean => request.startsWith('GET ');
  // A long `timeout` (replies, keep-alive connects): only the stream's own deadline can notice in time.
  const streamOnly: ClientOptions = { timeout: 8000, lineTimeout: LINE_TIMEOUT };
  it('http-streaming: a stream gone silent (its POSTs still pass) is dropped by its own deadline, and nothing is lost', { timeout: 40_000 }, async (t) => {
    assert.match(await silentLine(t, 'http-streaming', stream, streamOnly), /silent for 3500 ms/);
  });

  // The server's SSE heartbeat is an `event: heartbeat`, which EventSource listeners see (a
  // comment they would not): an idle stream can be told from a dead one.
  it('eventsource: a stream gone silent (its POSTs still pass) is dropped by its own deadline, and nothing is lost', { timeout: 40_000 }, async (t) => {
    assert.match(await silentLine(t, 'eventsource', stream, streamOnly), /silent for 3500 ms/);
  });

  // An unsubscribe must settle whatever the line does, and the server must end up without the
  // subscription: the client asked for it to go.
  for (const type of ['websocket', 'long-polling'] as const) {
    it(`${type}: an unsubscribe in flight on a line that goes silent resolves once the client is back, and the server drops the subscription`, { timeout: 30_000 }, async () => {
      const setup = await setUp(type, '/bye/silent', 10);
      const { test, proxy, client } = setup;
      try {
        const extra = await client.subscribe('/bye/extra', () => {});
        const clientId = client.clientId!;
        assert.ok(test.server.getSession(clientId)?.subscriptions.has('/bye/extra'));
        // Heard as an event: the client may be connecting again only briefly, between two polls of its state.
        let noticed = false;
        client.on('connecting', () => (noticed = true));
        proxy.silence();
        const released = extra.unsubscribe();
        await waitFor(() => noticed, HOLD + LINE_TIMEOUT + 5000, 'the client to notice the silent line');
        await waitFor(() => client.state === 'connected', 20_000, 'the reconnection');
        await Promise.race([released, sleep(10_000).then(() => assert.fail('the unsubscribe never settled'))]);
        const session = test.server.getSession(client.clientId!);
        await waitFor(() => session?.subscriptions.has('/bye/extra') === false, 5000, 'the server to drop the subscription');
        assert.ok(session?.subscriptions.has('/bye/silent'), 'the other subscription stays');
      } finally {
        await tearDown(setup);
      }
    });

    it(`${type}: an unsubscribe made while the line is down resolves, and the server drops the subscription once the client is back`, { timeout: 30_000 }, async () => {
      const setup = await setUp(type, '/bye/down', 10, { minReconnectDelay: 500, maxReconnectDelay: 500 });
      const { test, proxy, client } = setup;
      try {
        const extra = await client.subscribe('/bye/extra', () => {});
        // An outage, not a single reset: between two long-polls no connection may be open to
        // cut, and a retry made at once could find the line back before anyone looked.
        let noticed = false;
        client.on('connecting', () => (noticed = true));
        proxy.outage(1000);
        await waitFor(() => noticed && client.state === 'connecting', 5000, 'the client to notice the cut');
        const released = extra.unsubscribe();
        await waitFor(() => client.state === 'connected', 20_000, 'the reconnection');
        await Promise.race([released, sleep(10_000).then(() => assert.fail('the unsubscribe never settled'))]);
        const session = test.server.getSession(client.clientId!);
        await waitFor(() => session?.subscriptions.has('/bye/extra') === false, 5000, 'the server to drop the subscription');
        assert.ok(session?.subscriptions.has('/bye/down'), 'the other subscription stays');
      } finally {
        await tearDown(setup);
      }
    });
  }
});

describe('a pattern behind a line gone silent', () => {
  // Over long-polling a message still queued for the session reaches the client in the answer to
  // its first connect, ahead of the recovery: held, it is not taken for the channel's start.
  for (const type of ['websocket', 'eventsource', 'http-streaming', 'long-polling'] as ConnectionType[]) {
    for (const before of [true, false]) {
      it(`${type}: gets back, on the same session, what the dead line swallowed on channels it had never received from (${before ? 'having received from another' : 'having received nothing'})`, { timeout: 40_000 }, async () => {
        const test = await startServer({ historySize: 100, maxQueue: 100, heartbeat: 1000, timeout: HOLD });
        const proxy = await TcpProxy.start(test.port);
        const client = new Client(proxy.url(test.server.options.path), {
          transports: [type],
          WebSocket: WS as unknown as new (url: string) => WebSocket,
          EventSource: eventSourceOver(fetch),
          minReconnectDelay: 20,
          maxReconnectDelay: 200,
          timeout: LINE_TIMEOUT,
        });
        try {
          const received: string[] = [];
          const outcomes: boolean[] = [];
          await client.subscribe<string>('/w/*', (text, message) => received.push(`${message.channel}:${text}`), { onRecover: (ok) => void outcomes.push(ok) });
          if (before) {
            await test.server.publish('/w/a', 'a1');
            await waitFor(() => received.length === 1, 5000, 'the first message');
          }
          await sleep(300);
          const clientId = client.clientId;
          let noticed = false;
          client.once('connecting', () => (noticed = true));
          proxy.silence();
          // Written into the dead line: the server takes them as sent.
          await test.server.publish('/w/b', 'b1');
          await test.server.publish('/w/b', 'b2');
          if (before) await test.server.publish('/w/a', 'a2');
          await waitFor(() => noticed, HOLD + LINE_TIMEOUT + 1000, 'the client to notice the silence');
          await waitFor(() => client.state === 'connected', 20_000, 'the reconnection');
          const expected = before ? ['/w/a:a1', '/w/a:a2', '/w/b:b1', '/w/b:b2'] : ['/w/b:b1', '/w/b:b2'];
          await waitFor(() => received.length >= expected.length, 10_000, () => `what the dead line swallowed (have ${received.join(' ')})`);
          await sleep(200);
          assert.equal(client.clientId, clientId, 'the same session');
          assert.deepEqual([...received].sort(), expected, 'each message once');
          assert.deepEqual(received.filter((m) => m.startsWith('/w/b')), ['/w/b:b1', '/w/b:b2'], 'in order');
          assert.deepEqual(outcomes, [true], 'and said to be recovered whole');
        } finally {
          await client.disconnect();
          await proxy.close();
          await test.close();
        }
      });
    }
  }
});
