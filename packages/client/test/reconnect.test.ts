/**
 * Losing the network, the session or the WebSocket, and coming back: re-handshake,
 * re-subscription, recovery of missed messages from the server's history, no duplicates,
 * publishes made offline sent afterwards.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocket as WS } from 'ws';
import type { ConnectionType, Position } from '@perihelion/protocol';
import { Client, ClientError, type RecoveryOutcome } from '../src/index.js';
import { RedisEngine } from '@perihelion/server';
import { client, Net, requireRedis, sleep, startServer, TcpProxy, waitFor, type TestServer } from './helpers.js';

/** Subscribes, checks the client fell back to long-polling, and that a publish reaches it there. */
async function receivesOverLongPolling(c: Client, server: { publish(channel: string, data: unknown): Promise<unknown> }, channel: string): Promise<void> {
  const received: unknown[] = [];
  await c.subscribe(channel, (data) => received.push(data));
  assert.equal(c.transport, 'long-polling');
  await server.publish(channel, 'over long-polling');
  await waitFor(() => received.length === 1, 3000, 'the message');
  assert.deepEqual(received, ['over long-polling']);
}

describe('a client restarted: subscribe({ since })', () => {
  for (const type of ['websocket', 'long-polling'] as ConnectionType[]) {
    it(`${type}: a new client given the last position the old one handled gets what was published in between, once, in order`, async () => {
      const test = await startServer({ historySize: 100 });
      const options = { transports: [type], WebSocket: WS as unknown as typeof WebSocket };
      const first = client(test.url, options);
      try {
        let last: Position | undefined;
        await first.subscribe<number>('/restart/orders', (_n, message) => void (last = message.ext?.position as Position));
        await test.server.publish('/restart/orders', 1);
        await waitFor(() => last !== undefined, 3000, 'the first message');
        await first.disconnect();
        for (let n = 2; n <= 4; n++) await test.server.publish('/restart/orders', n);
        // The process comes back with the position it saved.
        const second = client(test.url, options);
        const received: number[] = [];
        const told: boolean[] = [];
        const subscription = await second.subscribe<number>('/restart/orders', (n) => received.push(n), { since: last!, onRecover: (ok) => void told.push(ok) });
        assert.equal(subscription.recovered, true);
        assert.deepEqual(told, [true]);
        await waitFor(() => received.length >= 3, 3000, () => `the three published meanwhile (have ${received.join(',')})`);
        await test.server.publish('/restart/orders', 5);
        await waitFor(() => received.length >= 4, 3000, 'the live one after them');
        assert.deepEqual(received, [2, 3, 4, 5]);
        await second.disconnect();
      } finally {
        await test.close();
      }
    });
  }

  it('says a position the history no longer covers was not recovered, and a wildcard resumes the channels it names', async () => {
    const test = await startServer({ historySize: 2 });
    try {
      const publishAll = async (channel: string, values: number[]): Promise<Position> => {
        for (const n of values) await test.server.publish(channel, n);
        return (await test.server.history(channel))!.position!;
      };
      const old = await publishAll('/resume/short', [1, 2, 3, 4, 5]);
      const stale = { epoch: old.epoch, offset: 1 };
      const c = client(test.url);
      const received: number[] = [];
      const subscription = await c.subscribe<number>('/resume/short', (n) => received.push(n), { since: stale });
      assert.equal(subscription.recovered, false, 'offsets 2 and 3 are gone from a history of 2');
      const b = await publishAll('/resume/many/b', [10, 11]);
      const got: string[] = [];
      const wildcard = await c.subscribe<number>('/resume/many/*', (n, message) => got.push(`${message.channel}:${n}`), { since: { '/resume/many/b': { epoch: b.epoch, offset: 1 } } });
      await waitFor(() => got.length >= 1, 3000, 'the replay of b');
      assert.deepEqual(got, ['/resume/many/b:11']);
      assert.equal(wildcard.recovered, false, 'a wildcard cannot know the channels new while it was away');
      await c.disconnect();
    } finally {
      await test.close();
    }
  });

  it('a since given to a pattern already held is ignored: its live messages go on, with no new session', async () => {
    const test = await startServer({ historySize: 100 });
    try {
      // Published before the client came: offset 1, which it never receives.
      await test.server.publish('/held/x', 0);
      const old = { epoch: (await test.server.history('/held/x'))!.position!.epoch, offset: 0 };
      const c = client(test.url);
      const recoveries: unknown[] = [];
      c.on('recovery', (event) => recoveries.push(event));
      const got: number[] = [];
      await c.subscribe<number>('/held/*', (n) => got.push(n));
      const session = c.clientId;
      const more: number[] = [];
      const second = await c.subscribe<number>('/held/*', (n) => more.push(n), { since: { '/held/x': old } });
      assert.equal(second.recovered, undefined, 'nothing was recovered');
      for (const n of [1, 2, 3]) await test.server.publish('/held/x', n);
      await waitFor(() => got.length >= 3 && more.length >= 3, 3000, () => `the live messages (have ${got.join(',')} and ${more.join(',')})`);
      assert.deepEqual([got, more], [[1, 2, 3], [1, 2, 3]]);
      assert.equal(c.clientId, session, 'a seeded position was taken for a gap: a new session');
      assert.deepEqual(recoveries, []);
      await c.disconnect();
    } finally {
      await test.close();
    }
  });

  it('refuses a since that is no position, or names a channel its pattern does not cover', async () => {
    const c = new Client('http://127.0.0.1:9/bayeux', { autoConnect: false });
    await assert.rejects(c.subscribe('/a', () => {}, { since: { epoch: 'e', offset: -1 } as never }), /since for \/a must be a position \{epoch, offset\}, got \{"epoch":"e","offset":-1\}/);
    await assert.rejects(c.subscribe('/a/*', () => {}, { since: { epoch: 'e', offset: 1 } }), /since for \/a\/\* must be positions by channel under it/);
    await assert.rejects(c.subscribe('/a/*', () => {}, { since: { '/b/x': { epoch: 'e', offset: 1 } } }), /must be positions by channel under it/);
    await assert.rejects(c.subscribe('/a/*', () => {}, { since: { '/a/x': 'e:1' as never } }), /must be positions by channel under it/);
  });
});

describe('reconnection', () => {
  for (const type of ['websocket', 'long-polling'] as ConnectionType[]) {
    it(`handshakes again when the session expired while offline (${type}), re-subscribes and recovers what was missed`, async () => {
      // Sessions expire 300 ms after their line goes: the client comes back to an unknown clientId.
      const test = await startServer({ maxInterval: 1000, timeout: 2000 });
      const net = new Net();
      const c = client(test.url, { transports: [type] }, net);
      try {
        const received: number[] = [];
        const recoveries: RecoveryOutcome[] = [];
        const subscription = await c.subscribe<number>('/r/live', (n) => received.push(n), { onRecover: (_ok, outcome) => recoveries.push(outcome) });
        const reasons: string[] = [];
        c.on('connecting', (change) => reasons.push(change.reason));
        for (let n = 1; n <= 3; n++) await test.server.publish('/r/live', n);
        await waitFor(() => received.length === 3, 3000, 'live messages');
        const firstSession = c.clientId!;

        net.cut();
        await waitFor(() => c.state === 'connecting', 3000, 'the client to notice');
        await waitFor(() => test.server.getSession(firstSession) === undefined, 5000, 'the session to expire');
        for (let n = 4; n <= 6; n++) await test.server.publish('/r/live', n);
        // A publish made offline waits in the queue and leaves once connected again.
        const heard: unknown[] = [];
        const stop = test.server.subscribe('/r/up', (message) => void heard.push(message.data));
        const offlinePublish = c.publish('/r/up', 'sent while offline');
        net.restore();

        await waitFor(() => c.state === 'connected', 5000, 'reconnection');
        assert.notEqual(c.clientId, firstSession, 'a new session');
        if (type === 'websocket') {
          // The new session's subscribe, asking for what followed the last message seen, went in its handshake's frame.
          const frames = net.framesOut.map((frame) => JSON.parse(frame) as { channel: string; subscription?: string; ext?: { recover?: Record<string, unknown> } }[]);
          const last = frames.filter((batch) => batch[0]?.channel === '/meta/handshake').at(-1)!;
          assert.deepEqual(
            last.map((m) => m.channel),
            ['/meta/handshake', '/meta/subscribe', '/meta/connect'],
          );
          assert.equal(last[1]!.subscription, '/r/live');
          assert.ok(last[1]!.ext?.recover?.['/r/live'], 'the subscribe carries the position to recover from');
        }
        await waitFor(() => received.length === 6, 5000, 'the missed messages');
        await offlinePublish;
        assert.deepEqual(heard, ['sent while offline']);
        stop();
        for (let n = 7; n <= 8; n++) await test.server.publish('/r/live', n);
        await waitFor(() => received.length === 8, 3000, 'live again');
        await sleep(100);
        assert.deepEqual(received, [1, 2, 3, 4, 5, 6, 7, 8], 'every message once, in order');
        assert.equal(subscription.recovered, true);
        assert.deepEqual(recoveries, [{ recovered: true, channels: { '/r/live': true } }]);
        assert.ok(reasons.some((r) => r.startsWith('network')), `reasons: ${reasons.join(' | ')}`);
      } finally {
        await c.disconnect();
        await test.close();
      }
    });
  }

  it('reports recovered: false when the history no longer holds what was missed', async () => {
    const test = await startServer({ maxInterval: 1000, timeout: 2000, historySize: 2 });
    const net = new Net();
    const c = client(test.url, { transports: ['long-polling'] }, net);
    try {
      const received: number[] = [];
      const events: unknown[] = [];
      c.on('recovery', (event) => events.push(event));
      const subscription = await c.subscribe<number>('/r/short', (n) => received.push(n));
      await test.server.publish('/r/short', 1);
      await waitFor(() => received.length === 1, 3000, 'the first message');
      const first = c.clientId!;
      net.cut();
      await waitFor(() => test.server.getSession(first) === undefined, 5000, 'the session to expire');
      for (let n = 2; n <= 6; n++) await test.server.publish('/r/short', n);
      net.restore();
      await waitFor(() => events.length === 1, 5000, 'the recovery event');
      assert.deepEqual(events[0], { pattern: '/r/short', recovered: false, channels: { '/r/short': false } });
      assert.equal(subscription.recovered, false);
      // Live messages still flow after an unrecoverable gap.
      await test.server.publish('/r/short', 7);
      await waitFor(() => received.includes(7), 3000, 'live after the loss');
      assert.deepEqual(received, [1, 7]);
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  it('recovers through a wildcard subscription the channels it had received from, and reports it incomplete (a channel new meanwhile is missed)', async () => {
    const test = await startServer({ maxInterval: 1000, timeout: 2000 });
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    try {
      const received: string[] = [];
      const outcomes: unknown[] = [];
      c.on('recovery', (event) => outcomes.push(event));
      const subscription = await c.subscribe<string>('/w/*', (text, message) => received.push(`${message.channel}:${text}`));
      await test.server.publish('/w/a', 'a1');
      await test.server.publish('/w/b', 'b1');
      await waitFor(() => received.length === 2, 3000, 'live');
      const first = c.clientId!;
      net.cut();
      await waitFor(() => test.server.getSession(first) === undefined, 5000, 'the session to expire');
      await test.server.publish('/w/a', 'a2');
      await test.server.publish('/w/b', 'b2');
      await test.server.publish('/w/new', 'n1');
      net.restore();
      await waitFor(() => received.length === 4, 5000, 'the missed messages');
      await sleep(100);
      assert.deepEqual(received, ['/w/a:a1', '/w/b:b1', '/w/a:a2', '/w/b:b2'], 'what it named is recovered; /w/new it never heard of');
      // Which is why the recovery is not reported whole: the application reloads.
      assert.deepEqual(outcomes, [{ pattern: '/w/*', recovered: false, channels: { '/w/a': true, '/w/b': true } }]);
      assert.equal(subscription.recovered, false);
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  it('reports a wildcard subscription that had received nothing as not recovered on a new session', async () => {
    const test = await startServer({ maxInterval: 1000, timeout: 2000 });
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    try {
      const outcomes: unknown[] = [];
      c.on('recovery', (event) => outcomes.push(event));
      const received: string[] = [];
      const subscription = await c.subscribe<string>('/w0/*', (text) => received.push(text));
      const first = c.clientId!;
      net.cut();
      await waitFor(() => test.server.getSession(first) === undefined, 5000, 'the session to expire');
      await test.server.publish('/w0/a', 'missed');
      net.restore();
      await waitFor(() => outcomes.length === 1, 5000, 'the recovery report');
      assert.deepEqual(outcomes, [{ pattern: '/w0/*', recovered: false, channels: {} }]);
      assert.equal(subscription.recovered, false);
      assert.deepEqual(received, []);
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  it('recovers on the same session the messages a full queue dropped during a cut, in order', async () => {
    // A slow consumer: the session lives on, but its queue keeps only the last 3 messages.
    const test = await startServer({ maxInterval: 60_000, timeout: 2000, maxQueue: 3, queueOverflow: 'drop-oldest' });
    const net = new Net();
    const c = client(test.url, { transports: ['long-polling'] }, net);
    try {
      const received: number[] = [];
      await c.subscribe<number>('/g/x', (n) => received.push(n));
      await test.server.publish('/g/x', 1);
      await waitFor(() => received.length === 1, 3000, 'the first message');
      const first = c.clientId!;
      net.cut();
      await waitFor(() => c.state === 'connecting', 3000, 'the cut');
      for (let n = 2; n <= 10; n++) await test.server.publish('/g/x', n);
      assert.ok(test.server.getSession(first), 'the session is still alive');
      net.restore();
      await waitFor(() => received.length >= 10, 6000, 'all ten messages');
      await sleep(200);
      assert.deepEqual(received, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      // After a lost line the subscription asks for what it missed from its last position: the
      // queue's last messages (past the gap) wait for that replay instead of forcing a new session.
      assert.equal(c.clientId, first, 'recovered on the same session');
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  it('sees a gap while the line stays up and recovers the missing message through a new session', async () => {
    const test = await startServer({ timeout: 2000 });
    const c = client(test.url, { transports: ['long-polling'] });
    try {
      const received: number[] = [];
      // A delivery lost without the line noticing (as a server's full queue drops one): once only.
      let lost = false;
      c.addExtension({
        incoming: (message) => {
          if (!lost && message.channel === '/gap/x' && message.data === 2) {
            lost = true;
            return null;
          }
          return message;
        },
      });
      await c.subscribe<number>('/gap/x', (n) => received.push(n));
      const first = c.clientId!;
      const reasons: string[] = [];
      c.on('connecting', (change) => reasons.push(change.reason));
      for (let n = 1; n <= 3; n++) await test.server.publish('/gap/x', n);
      await waitFor(() => received.length >= 3, 5000, 'all three messages');
      await sleep(200);
      assert.deepEqual(received, [1, 2, 3]);
      assert.notEqual(c.clientId, first, 'recovered through a new session');
      assert.ok(reasons.some((reason) => reason.startsWith('gap on /gap/x')), `reasons: ${reasons.join(' | ')}`);
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  for (const swept of [false, true]) {
    const title = swept
      ? 'resends a publish whose reply was lost on the new session, when the old one was swept meanwhile: the server keeps one copy'
      : 'resends a publish whose reply was lost with the same id: the server keeps one copy';
    it(title, async () => {
      const test = await startServer({ timeout: 2000 });
      const net = new Net();
      const c = client(test.url, { transports: ['long-polling'] }, net);
      const text = swept ? 'swept once' : 'once';
      try {
        await c.connect();
        const first = c.clientId!;
        const heard: unknown[] = [];
        const stop = test.server.subscribe('/d/x', (message) => void heard.push(message.data));
        // The publish reaches the server; its reply is lost (and, swept, the session is ended
        // before the client is back: a line down longer than maxInterval).
        net.loseReply = (body) => {
          if (!body.includes(`"${text}"`)) return false;
          if (swept) test.server.getSession(first)?.disconnect();
          return true;
        };
        await c.publish('/d/x', text);
        if (swept) assert.notEqual(c.clientId, first, 'a new session');
        await sleep(200);
        const sent = net.bodies.filter((body) => body.includes(`"${text}"`));
        assert.equal(sent.length, 2, 'the publish went out twice');
        assert.equal(new Set(sent.map((body) => (JSON.parse(body) as { id: string }[])[0]!.id)).size, 1, 'with the same id');
        assert.deepEqual(heard, [text]);
        stop();
      } finally {
        await c.disconnect();
        await test.close();
      }
    });
  }

  // A node cut off from Redis misses what other nodes publish; its client, back on it, asks to
  // recover, and the node cannot read the history then: that is no loss yet. The client used to
  // take it for one (recovered: false), and what it missed never came.
  it('in a cluster, asks again for a recovery its node could not read while cut off from Redis, and gets every message once, in order', async () => {
    await requireRedis();
    const prefix = `later-${process.pid}-${Date.now()}:`;
    const toRedis = await TcpProxy.start(6379);
    const a = await startServer({ engine: new RedisEngine({ url: 'redis://127.0.0.1:6379', prefix }) });
    const b = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${toRedis.port}`, prefix, heartbeatInterval: 300, commandTimeout: 1000 }) });
    b.server.on('error', () => {});
    const net = new Net();
    const c = client(b.url, { transports: ['websocket'] }, net);
    try {
      const received: number[] = [];
      const outcomes: RecoveryOutcome[] = [];
      c.on('recovery', (outcome) => void outcomes.push(outcome));
      await c.subscribe<number>('/later', (n) => void received.push(n));
      for (const n of [1, 2, 3]) await a.server.publish('/later', n);
      await waitFor(() => received.length === 3, 3000, 'the first messages');
      // Node b loses Redis for 3 s; meanwhile node a publishes, and b hears nothing of it.
      toRedis.outage(3000);
      await waitFor(() => b.server.engine.away?.() != null, 3000, 'node b to find Redis away');
      for (const n of [4, 5, 6]) await a.server.publish('/later', n);
      // The client's line drops; back on node b, the same session asks to recover from 3.
      net.cut();
      await sleep(100);
      net.restore();
      // Node b may bring them first itself, once it hears Redis again (its catch-up); the client's
      // recovery, asked again until node b can read the history, says none is lost.
      await waitFor(() => received.length === 6 && outcomes.length > 0, 15_000, () => `every message and the recovery's outcome (received ${JSON.stringify(received)}, recoveries ${JSON.stringify(outcomes)})`);
      await sleep(200);
      assert.deepEqual(received, [1, 2, 3, 4, 5, 6]);
      assert.ok(outcomes.length > 0 && outcomes.every((outcome) => outcome.recovered), JSON.stringify(outcomes));
    } finally {
      await c.disconnect();
      await Promise.all([a.close(), b.close()]);
      await toRedis.close();
    }
  });

  it('in a cluster, resends a publish whose reply was lost on a new session on another node, its node gone meanwhile: the cluster keeps one copy', async () => {
    await requireRedis();
    const prefix = `resend-${process.pid}-${Date.now()}:`;
    const node = (): Promise<TestServer> => startServer({ engine: new RedisEngine({ url: 'redis://127.0.0.1:6379', prefix }) });
    const [a, b] = [await node(), await node()];
    const net = new Net();
    const c = client(a.url, { transports: ['long-polling'] }, net);
    try {
      const heard: unknown[] = [];
      const stop = b.server.subscribe('/d/x', (message) => void heard.push(message.data));
      await c.connect();
      const first = c.clientId!;
      // The publish reaches node a, which publishes it; the reply is lost, and the network with
      // it, while node a goes away. The balancer then sends the client to node b.
      let lost = false;
      net.loseReply = (body) => {
        if (!body.includes('"once in the cluster"')) return false;
        net.offline = lost = true;
        return true;
      };
      const published = c.publish('/d/x', 'once in the cluster');
      await waitFor(() => lost, 5000, 'the reply lost');
      await a.close();
      net.httpUrl = (url) => url.replace(`:${a.port}/`, `:${b.port}/`);
      net.offline = false;
      await published;
      assert.notEqual(c.clientId, first, 'a new session, on node b');
      await c.publish('/d/x', 'next');
      await waitFor(() => heard.includes('next'), 5000, () => `the next message (heard ${JSON.stringify(heard)})`);
      const sent = net.bodies.filter((body) => body.includes('"once in the cluster"'));
      assert.equal(sent.length, 2, 'the publish went out twice');
      assert.deepEqual(heard, ['once in the cluster', 'next']);
      stop();
    } finally {
      await c.disconnect();
      await Promise.all([a.close(), b.close()]);
    }
  });

  for (const type of ['websocket', 'long-polling'] as ConnectionType[]) {
    it(`a request made while the server is unreachable times out from the call and is never sent; a publish waits and is sent (${type})`, async () => {
      const test = await startServer();
      const net = new Net();
      net.cut();
      const c = client(test.url, { transports: [type] }, net);
      try {
        const calls: unknown[] = [];
        const stopService = test.server.subscribe('/service/late', (message) => {
          calls.push(message.data);
          return 'answered';
        });
        const heard: unknown[] = [];
        const stopListen = test.server.subscribe('/d/offline', (message) => void heard.push(message.data));
        const published = c.publish('/d/offline', 'queued offline');
        const started = Date.now();
        const outcome = await Promise.race([
          c.request('/service/late', 'too late', { timeout: 300 }).then(
            () => 'answered',
            (error: unknown) => error,
          ),
          sleep(2000).then(() => 'still pending after 2 s'),
        ]);
        const elapsed = Date.now() - started;
        assert.ok(outcome instanceof ClientError && outcome.code === 'timeout', `rejected with timeout, not ${String(outcome)}`);
        assert.ok(elapsed >= 290 && elapsed < 1000, `rejected after ${elapsed} ms, for a timeout of 300`);
        assert.notEqual(c.state, 'connected');
        net.restore();
        // The publish waited for the connection (its timeout counts from sending), then went out.
        await published;
        await sleep(200);
        assert.deepEqual(heard, ['queued offline']);
        assert.deepEqual(calls, [], 'the request that timed out was not sent once connected');
        assert.ok(![...net.bodies, ...net.framesOut].some((sent) => sent.includes('too late')), 'nor put on the wire');
        stopService();
        stopListen();
      } finally {
        await c.disconnect();
        await test.close();
      }
    });
  }

  it('falls back to long-polling when the WebSocket upgrade is refused', async () => {
    const test = await startServer();
    // The upgrade goes to a path the server refuses (404), as a proxy that blocks WebSocket would.
    class Blocked extends WS {
      constructor(url: string) {
        super(url.replace('/bayeux', '/blocked'));
      }
    }
    const c = new Client(test.url, { WebSocket: Blocked as unknown as new (url: string) => WebSocket, transports: ['websocket', 'long-polling'], minReconnectDelay: 50 });
    try {
      await receivesOverLongPolling(c, test.server, '/fb/x');
      assert.equal(test.server.getSession(c.clientId!)?.connectionType, 'long-polling');
    } finally {
      await c.disconnect();
      await test.close();
    }
  });

  it('abandons a stream that an intermediary buffers and carries on over long-polling', async () => {
    const test = await startServer({ heartbeat: 60_000 });
    // A proxy that passes requests through but holds streamed responses until they end.
    const proxy = createHttpServer((req, res) => {
      const upstream = httpRequest({ host: '127.0.0.1', port: test.port, path: req.url, method: req.method, headers: req.headers }, (answer) => {
        const streamed = String(answer.headers['content-type']).includes('ndjson');
        if (!streamed) {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          return;
        }
        const chunks: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => chunks.push(chunk));
        answer.on('end', () => res.writeHead(answer.statusCode ?? 502, answer.headers).end(Buffer.concat(chunks)));
      });
      req.pipe(upstream);
      res.on('close', () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const c = client(`http://127.0.0.1:${(proxy.address() as AddressInfo).port}/bayeux`, { transports: ['http-streaming', 'long-polling'], streamTimeout: 500 });
    try {
      await receivesOverLongPolling(c, test.server, '/buffered/x');
    } finally {
      await c.disconnect();
      proxy.closeAllConnections();
      proxy.close();
      await test.close();
    }
  });

  it('tells the application of every refused attempt while it keeps trying: a full server (503), a wrong path (404)', async () => {
    const test = await startServer({ maxSessions: 1 });
    const first = client(test.url, { transports: ['long-polling'] });
    const full = client(test.url, { transports: ['long-polling'], minReconnectDelay: 20, maxReconnectDelay: 50 });
    const lost = client(test.url.replace(/\/[^/]*$/, '/nowhere'), { transports: ['long-polling'], minReconnectDelay: 20, maxReconnectDelay: 50 });
    try {
      await first.connect();
      const reasons: Record<string, string[]> = { full: [], lost: [] };
      full.on('state', (change) => reasons.full!.push(`${change.previous}>${change.state}: ${change.reason}`));
      lost.on('state', (change) => reasons.lost!.push(`${change.previous}>${change.state}: ${change.reason}`));
      void full.connect().catch(() => {});
      void lost.connect().catch(() => {});
      // The server's advice to wait 5 s applies to the full one: its first refusal is told at once.
      await waitFor(() => reasons.full!.some((r) => r.startsWith('connecting>connecting:')) && reasons.lost!.filter((r) => r.startsWith('connecting>connecting:')).length >= 2, 5000, () => `attempts told (${JSON.stringify(reasons)})`);
      assert.match(reasons.full!.find((r) => r.startsWith('connecting>connecting:'))!, /503::.*at most 1 sessions/);
      assert.match(reasons.lost!.find((r) => r.startsWith('connecting>connecting:'))!, /404/);
      assert.equal(full.state, 'connecting');
    } finally {
      await Promise.all([first.disconnect(), full.disconnect(), lost.disconnect()]);
      await test.close();
    }
  });

  // Over long-polling the held connect is answered with reconnect "none"; a stream holds no
  // connect, and carries the same reply as its last words before it ends.
  for (const transport of ['long-polling', 'http-streaming'] as const) {
    it(`follows advice reconnect "none" over ${transport}: a session ended by the server stays ended`, async () => {
      const test = await startServer({ timeout: 2000 });
      const c = client(test.url, { transports: [transport] });
      try {
        await c.connect();
        assert.equal(c.transport, transport);
        const ended = new Promise<string>((resolve, reject) => {
          c.once('disconnected', (change) => resolve(change.reason));
          setTimeout(() => reject(new Error('the client did not stop')), 5000).unref();
        });
        // Once the connect is held (or the stream open), the server ends the session.
        await sleep(200);
        test.server.getSession(c.clientId!)!.disconnect();
        assert.match(await ended, /none/);
        assert.equal(c.state, 'disconnected');
        await sleep(300);
        assert.equal(test.server.stats().sessions, 0, 'no new handshake');
        // The application may start again: a publish (autoConnect) opens a new session.
        await c.publish('/none/x', 1);
        assert.equal(c.state, 'connected');
        await c.disconnect();
      } finally {
        await test.close();
      }
    });
  }
});
