/**
 * A WebSocket refused once is tried again (`transportRetry`): a live session on long-polling or on
 * a stream (the default types in Node fall back to http-streaming) moves to it when it opens,
 * without a new handshake, and carries on over its type while it is refused still. The refusal is
 * the server's own (`maxWebsocketsPerIp`, 429), its one WebSocket for this address taken by
 * another socket, as a NAT full of users would have it; or a proxy's that swallows the upgrade
 * and never answers.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createNetServer, type Socket } from 'node:net';
import { WebSocket as WS } from 'ws';
import { Client } from '../src/index.js';
import { client, Net, sleep, startServer, waitFor, type TestServer } from './helpers.js';

/** A server allowing one WebSocket per address, that one held by another socket of this machine. */
async function serverWithItsWebsocketTaken(): Promise<{ test: TestServer; held: WS }> {
  // Connects are held 300 ms (a stream's come every 300 ms): a session reaches a connect's end, where it may move, often.
  const test = await startServer({ maxWebsocketsPerIp: 1, timeout: 300 });
  const held = new WS(test.url.replace(/^http/, 'ws'));
  await once(held, 'open');
  return { test, held };
}

/** Publishes 1, 2, 3, … on `channel` every `every` ms until stopped; resolves to the count published. */
function keepPublishing(test: TestServer, channel: string, every: number): { stop: () => Promise<number> } {
  let n = 0;
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      await test.server.publish(channel, ++n);
      await sleep(every);
    }
    return n;
  })();
  return {
    stop: () => {
      stopped = true;
      return done;
    },
  };
}

/** A TCP server that takes connections and never answers: a proxy swallowing WebSocket upgrades. */
async function blackHole(): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  return {
    url: `ws://127.0.0.1:${port}/bayeux`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type Fallback = 'long-polling' | 'http-streaming';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

describe('a refused WebSocket tried again (transportRetry)', () => {
  const servers: { test: TestServer; held: WS }[] = [];
  after(async () => {
    for (const { test, held } of servers) {
      held.close();
      await test.close();
    }
  });

  /**
   * A client refused its WebSocket, set up over `fallback` and subscribed to `channel`; what it
   * receives there, and its state changes from then on. `fallback` is long-polling (the only other
   * type it is given) or http-streaming (the default types, in Node: no EventSource).
   */
  async function refusedClient(transportRetry: number, channel: string, fallback: Fallback = 'long-polling'): Promise<{ test: TestServer; held: WS; c: Client; session: string; received: number[]; states: string[]; moves: string[]; net: Net }> {
    const setup = await serverWithItsWebsocketTaken();
    servers.push(setup);
    const { test, held } = setup;
    const net = new Net();
    const c = client(test.url, { transportRetry, ...(fallback === 'long-polling' ? { transports: ['websocket', 'long-polling'] } : {}) }, net);
    const received: number[] = [];
    await c.subscribe<number>(channel, (n) => received.push(n));
    assert.equal(c.transport, fallback, `refused its WebSocket, the client set up over ${fallback}`);
    assert.ok(test.server.stats().websocketsRefused >= 1);
    const states: string[] = [];
    c.on('state', (change) => states.push(`${change.state}: ${change.reason}`));
    const moves: string[] = [];
    c.on('transport', (change) => moves.push(`${change.previous} > ${change.transport}`));
    c.on('recovery', (outcome) => moves.push(`recovery of ${outcome.pattern}: ${outcome.recovered}`));
    return { test, held, c, session: c.clientId!, received, states, moves, net };
  }

  for (const fallback of ['long-polling', 'http-streaming'] as const) {
    it(`moves a ${fallback} session to the WebSocket once it opens: same session, still connected, nothing lost or doubled`, async () => {
      const { test, held, c, session, received, states, moves, net } = await refusedClient(300, '/retry/up', fallback);

      const publisher = keepPublishing(test, '/retry/up', 20);
      await sleep(200);
      held.close();
      await waitFor(() => test.server.getSession(session)?.connectionType === 'websocket', 5000, 'the session to move to the WebSocket');
      assert.equal(c.transport, 'websocket');
      await sleep(200);
      const published = await publisher.stop();
      await waitFor(() => received.length >= published, 3000, 'every message');
      await sleep(100);

      assert.equal(c.clientId, session, 'the same session: no new handshake');
      assert.deepEqual(states, [], 'the client stayed connected throughout');
      // Leaving a stream asks again for what it may have carried unread (below), but a replay that
      // lost nothing is no news: the application saw no cut.
      assert.deepEqual(moves, [`${fallback} > websocket`], 'the move told once, and no recovery');
      assert.deepEqual(received, range(published), 'every message once, in order, across the move');
      // The socket's first frame moves the session; leaving a stream, it also asks for what the
      // stream may have carried unread, from the last position.
      const first = JSON.parse(net.framesOut[0]!) as { channel: string; ext?: { recover?: unknown } }[];
      assert.equal(first[0]!.channel, '/meta/connect');
      const resync = first.find((m) => m.channel === '/meta/subscribe');
      if (fallback === 'long-polling') assert.equal(resync, undefined, 'nothing to ask for again after long-polling');
      else assert.ok(resync?.ext?.recover, 'a subscribe with ext.recover in the same frame');
      await c.disconnect();
    });

    it(`carries on over ${fallback} while the WebSocket is refused still, trying it again every transportRetry`, async () => {
      const { test, c, session, received, states, moves, net } = await refusedClient(200, '/retry/refused', fallback);
      const refusedAtStart = test.server.stats().websocketsRefused;
      // What the client says it uses while it tries the WebSocket: the line that carries the session.
      const reportedDuringTries = new Set<string | undefined>();
      net.onWebSocket = () => reportedDuringTries.add(c.transport);
      const startedAt = Date.now();

      const publisher = keepPublishing(test, '/retry/refused', 25);
      await sleep(1500);
      const published = await publisher.stop();
      await waitFor(() => received.length >= published, 3000, 'every message');

      const probes = test.server.stats().websocketsRefused - refusedAtStart;
      const elapsed = Date.now() - startedAt;
      // Each try waits 200 to 300 ms (transportRetry, plus up to half again at random) and the next connect's end.
      assert.ok(probes >= 3, `the WebSocket was tried again (${probes} times in ${elapsed} ms)`);
      assert.ok(probes <= Math.ceil(elapsed / 200), `and not more often than every 200 ms (${probes} times in ${elapsed} ms)`);
      assert.equal(c.transport, fallback);
      assert.equal(c.clientId, session, 'the same session');
      assert.equal(test.server.getSession(session)?.connectionType, fallback);
      assert.deepEqual(states, [], 'a refused attempt is no news: the client stayed connected');
      assert.deepEqual(moves, [], 'nor a move');
      assert.deepEqual([...reportedDuringTries], [fallback], 'client.transport names the line in use, not the socket tried');
      assert.deepEqual(received, range(published), 'every message once, in order');
      await c.disconnect();
    });
  }

  it('carries on over long-polling while a proxy swallows each WebSocket: no delivery waits for a socket that never opens', async () => {
    const hole = await blackHole();
    const test = await startServer({ timeout: 300 });
    const net = new Net();
    net.webSocketUrl = () => hole.url;
    let sockets = 0;
    net.onWebSocket = () => sockets++;
    const c = client(test.url, { transports: ['websocket', 'long-polling'], transportRetry: 200, openTimeout: 1000 }, net);
    try {
      const waited: number[] = [];
      const received: number[] = [];
      await c.subscribe<{ n: number; at: number }>('/retry/swallowed', ({ n, at }) => {
        received.push(n);
        waited.push(Date.now() - at);
      });
      assert.equal(c.transport, 'long-polling', 'set up over long-polling once the first socket timed out');
      const states: string[] = [];
      c.on('state', (change) => states.push(`${change.state}: ${change.reason}`));
      const moves: string[] = [];
      c.on('transport', (change) => moves.push(`${change.previous} > ${change.transport}`));
      const socketsAtStart = sockets;

      let n = 0;
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        await test.server.publish('/retry/swallowed', { n: ++n, at: Date.now() });
        await sleep(20);
      }
      await waitFor(() => received.length >= n, 3000, 'every message');

      // Each try is swallowed for openTimeout (1 s), then blocked for transportRetry: two or more in 3 s.
      assert.ok(sockets - socketsAtStart >= 2, `the WebSocket was tried again (${sockets - socketsAtStart} times)`);
      assert.deepEqual(received, range(n), 'every message once, in order');
      // Had the session waited for a socket that never opens, deliveries would stop for openTimeout at each try.
      const longest = Math.max(...waited);
      assert.ok(longest < 600, `no delivery waited for a try (the longest waited ${longest} ms)`);
      assert.deepEqual(states, [], 'the client stayed connected');
      assert.deepEqual(moves, [], 'and on long-polling');
      assert.equal(test.server.getSession(c.clientId!)?.connectionType, 'long-polling');
    } finally {
      await c.disconnect();
      await test.close();
      await hole.close();
    }
  });

  it('with transportRetry 0, stays on long-polling without trying the WebSocket again', async () => {
    const { test, held, c, session } = await refusedClient(0, '/retry/never');
    held.close();
    // Connects end every 300 ms: three chances to move, none taken.
    await sleep(1000);
    assert.equal(c.transport, 'long-polling');
    assert.equal(test.server.getSession(session)?.connectionType, 'long-polling');
    await c.disconnect();
  });

  it('refuses a transportRetry that is not a number ≥ 0', () => {
    assert.throws(() => new Client('http://127.0.0.1:1/bayeux', { transportRetry: -1 }), /option "transportRetry" must be a number ≥ 0, got -1/);
  });
});
