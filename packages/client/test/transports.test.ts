/** The client against the real server over each transport it can use in Node. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ConnectionType } from '@perihelion/protocol';
import { ClientError, type Client } from '../src/index.js';
import { client, Net, sleep, startServer, waitFor, type TestServer } from './helpers.js';

describe('client over each transport (Node)', () => {
  let test: TestServer;

  before(async () => {
    test = await startServer({ heartbeat: 1000 });
  });
  after(() => test.close());

  for (const type of ['websocket', 'long-polling', 'http-streaming'] as ConnectionType[]) {
    it(`subscribes, receives, publishes and disconnects over ${type}`, async () => {
      const c = client(test.url, { transports: [type] });
      const states: string[] = [];
      c.on('state', (change) => states.push(change.state));
      await c.connect();
      assert.equal(c.transport, type);
      const received: unknown[] = [];
      const channel = `/t/${type}`;
      const subscription = await c.subscribe<{ n: number }>(channel, (data, message) => {
        assert.equal(message.channel, channel);
        received.push(data);
      });
      assert.equal(test.server.getSession(c.clientId!)?.connectionType, type);
      for (let n = 1; n <= 3; n++) await test.server.publish(channel, { n });
      await waitFor(() => received.length === 3, 5000, 'three messages');
      assert.deepEqual(received, [{ n: 1 }, { n: 2 }, { n: 3 }]);

      // From the client to a server-side listener, acknowledged.
      const heard: unknown[] = [];
      const stop = test.server.subscribe(`${channel}/up`, (message) => void heard.push(message.data));
      const ack = await c.publish(`${channel}/up`, { hello: type });
      assert.equal(ack.successful, true);
      await waitFor(() => heard.length === 1, 3000, 'the publish');
      assert.deepEqual(heard, [{ hello: type }]);
      stop();

      // A second handler on the same channel shares one server subscription.
      const second: unknown[] = [];
      const other = await c.subscribe(channel, (data) => second.push(data));
      await subscription.unsubscribe();
      await test.server.publish(channel, { n: 4 });
      await waitFor(() => second.length === 1, 3000, 'the second handler');
      assert.equal(received.length, 3, 'an unsubscribed handler is not called');
      await other.unsubscribe();

      const clientId = c.clientId!;
      await c.disconnect();
      assert.equal(c.state, 'disconnected');
      assert.equal(test.server.getSession(clientId), undefined, 'the server ended the session');
      assert.deepEqual(states, ['connecting', 'connected', 'disconnected']);
    });
  }

  for (const type of ['websocket', 'long-polling', 'http-streaming'] as ConnectionType[]) {
    it(`over ${type}, is not sent its own echo: false publish nor a server publish that excludes it, and takes neither hole for a loss`, async () => {
      const c = client(test.url, { transports: [type] });
      const channel = `/t/quiet/${type}`;
      const received: unknown[] = [];
      await c.subscribe(channel, (data) => received.push(data));
      const session = c.clientId;
      const states: string[] = [];
      c.on('state', (change) => states.push(`${change.state}: ${change.reason}`));
      await c.publish(channel, 'mine', { ext: { echo: false } });
      await test.server.publish(channel, 'not for c', { exclude: session! });
      await test.server.publish(channel, 'for all');
      await waitFor(() => received.length === 1, 3000, 'the message for all');
      await sleep(200);
      assert.deepEqual(received, ['for all'], 'neither excluded message, not even through a recovery');
      assert.deepEqual(states, [], 'no gap seen: the session carried on');
      assert.equal(c.clientId, session, 'the same session');
      await c.disconnect();
    });
  }

  it('publishes with an idempotency key once, however often a client (or its next run) makes it again', async () => {
    const heard: unknown[] = [];
    const stop = test.server.subscribe('/t/keyed', (message) => void heard.push(message.data));
    const first = client(test.url, { transports: ['websocket'] });
    const ack = await first.publish('/t/keyed', 'invoice 12 sent', { idempotencyKey: 'invoice-12/sent' });
    assert.equal((ack.ext as { repeated?: boolean } | undefined)?.repeated, undefined);
    await first.disconnect();
    // The process stopped and started again: a new client, which cannot know whether it got through.
    const next = client(test.url, { transports: ['long-polling'] });
    const again = await next.publish('/t/keyed', 'invoice 12 sent', { idempotencyKey: 'invoice-12/sent', ext: { note: 'retry' } });
    assert.equal(again.successful, true);
    assert.equal((again.ext as { repeated?: boolean }).repeated, true, 'acknowledged as a repeat');
    await next.publish('/t/keyed', 'invoice 13 sent', { idempotencyKey: 'invoice-13/sent' });
    await waitFor(() => heard.length === 2, 3000, 'two messages');
    await sleep(100);
    assert.deepEqual(heard, ['invoice 12 sent', 'invoice 13 sent']);
    await assert.rejects(next.publish('/t/keyed', 'x', { idempotencyKey: 'not a key' }), (error: ClientError) => error.code === 'bayeux' && error.bayeuxCode === 400 && /visible ASCII/.test(error.message));
    stop();
    await next.disconnect();
  });

  it('answers request() with the service listener’s value', async () => {
    const stop = test.server.subscribe('/service/sum', (message) => {
      const { a, b } = message.data as { a: number; b: number };
      return { sum: a + b };
    });
    const c = client(test.url, { transports: ['websocket'] });
    const result = await c.request<{ sum: number }>('/service/sum', { a: 2, b: 40 });
    assert.deepEqual(result, { sum: 42 });
    stop();
    await c.disconnect();
  });

  it('rejects request() after its timeout when no answer comes', async () => {
    const c = client(test.url, { transports: ['long-polling'] });
    await c.connect();
    const started = Date.now();
    await assert.rejects(c.request('/service/nobody-answers', {}, { timeout: 400 }), (error: ClientError) => {
      assert.equal(error.code, 'timeout');
      return true;
    });
    assert.ok(Date.now() - started >= 380, 'not before the timeout');
    await c.disconnect();
  });

  it('rejects subscribe() and publish() to malformed channels before sending anything', async () => {
    const c = client(test.url, { autoConnect: false });
    await assert.rejects(c.subscribe('no-slash', () => {}), (error: ClientError) => error.code === 'invalid-channel');
    await assert.rejects(c.publish('/a/*', 1), (error: ClientError) => error.code === 'invalid-channel');
    await assert.rejects(c.request('/not/service', 1), (error: ClientError) => error.code === 'invalid-channel');
    assert.equal(c.state, 'disconnected');
  });

  it('sends the messages of a batch in one request', async () => {
    const { Net } = await import('./helpers.js');
    const net = new Net();
    const c = client(test.url, { transports: ['long-polling'] }, net);
    await c.connect();
    await c.subscribe('/batch/x', () => {});
    const heard: unknown[] = [];
    const stop = test.server.subscribe('/batch/x', (message) => void heard.push(message.data));
    const before = net.bodies.length;
    // Spread over several turns of the event loop: without the batch they would leave separately.
    const acks = await c.batch(async () => {
      const first = c.publish('/batch/x', 1);
      await sleep(30);
      const second = c.publish('/batch/x', 2);
      await sleep(30);
      return [first, second, c.publish('/batch/x', 3)];
    });
    await Promise.all(acks);
    // Only the POSTs that carry publishes count: a delivery of these very publishes may answer the
    // held connect meanwhile, and the connect that follows it is a POST of its own.
    const carrying = net.bodies
      .slice(before)
      .map((body) => (JSON.parse(body) as { channel: string; data?: unknown }[]).filter((m) => m.channel === '/batch/x' && m.data !== undefined).map((m) => m.data))
      .filter((published) => published.length > 0);
    assert.deepEqual(carrying, [[1, 2, 3]], 'three publishes, one POST');
    await waitFor(() => heard.length === 3, 3000, 'the batch');
    assert.deepEqual(heard, [1, 2, 3]);
    stop();
    await c.disconnect();
  });
});

describe('client refusals', () => {
  it('rejects a refused publish with the server’s Bayeux error', async () => {
    // Not open: clients may subscribe but not publish unless a rule allows it.
    const test = await startServer({ open: false, anonymous: true });
    try {
      const c = client(test.url, { transports: ['websocket'] });
      await c.connect();
      await assert.rejects(c.publish('/closed/channel', { x: 1 }), (error: ClientError) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, 'bayeux');
        assert.equal(error.bayeuxCode, 403);
        assert.match(error.bayeux ?? '', /^403:/);
        return true;
      });
      // The session is still fine.
      assert.equal(c.state, 'connected');
      await c.disconnect();
    } finally {
      await test.close();
    }
  });

  it('stops with handshake-denied when the server refuses the handshake for good', async () => {
    const test = await startServer({ open: false, anonymous: false, authenticate: () => null });
    try {
      const c = client(test.url, { transports: ['long-polling'], token: 'wrong' });
      const disconnected = new Promise((resolve) => c.once('disconnected', resolve));
      await assert.rejects(c.connect(), (error: ClientError) => {
        assert.equal(error.code, 'handshake-denied');
        assert.ok(error.bayeux?.startsWith('403:'), error.bayeux);
        return true;
      });
      await disconnected;
      assert.equal(c.state, 'disconnected');
    } finally {
      await test.close();
    }
  });
});

/** Subscribes `c` to `channel`, has the server publish 'first' there, and waits for it to arrive. */
async function receiveFirst(test: TestServer, c: Client, channel: string): Promise<void> {
  const received: unknown[] = [];
  await c.subscribe(channel, (data) => received.push(data));
  await test.server.publish(channel, 'first');
  await waitFor(() => received.length === 1, 3000, 'the first message');
}

describe('set-up over a WebSocket', () => {
  let test: TestServer;
  before(async () => {
    // Connects held for 2 s: the held bundled connect is answered within a test.
    test = await startServer({ heartbeat: 1000, timeout: 2000 });
  });
  after(() => test.close());

  const channelsOf = (frame: string): string[] => (JSON.parse(frame) as { channel: string }[]).map((m) => m.channel);

  it('sends handshake, subscribes and first connect in one frame, answered in one; that connect is the held one', async () => {
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    try {
      const received: unknown[] = [];
      await c.subscribe('/setup/a', (data) => received.push(data));
      assert.equal(c.state, 'connected');
      await waitFor(() => test.server.getSession(c.clientId!)?.subscriptions.has('/setup/a') === true, 3000, 'the subscription');
      await sleep(100);
      // (Sliced: on a slow machine the 2 s hold may already have ended, and the next connect gone.)
      assert.deepEqual(net.framesOut.slice(0, 1).map(channelsOf), [['/meta/handshake', '/meta/subscribe', '/meta/connect']]);
      assert.deepEqual(net.framesIn.slice(0, 1).map(channelsOf), [['/meta/handshake', '/meta/subscribe']]);
      const [bundledConnect] = (JSON.parse(net.framesOut[0]!) as { channel: string; advice?: unknown }[]).filter((m) => m.channel === '/meta/connect');
      assert.equal(bundledConnect!.advice, undefined, 'no timeout 0 asked for: the server holds it');
      await test.server.publish('/setup/a', 'first');
      await waitFor(() => received.length === 1, 3000, 'the first message');
      // The server's hold (2 s) ends: the bundled connect is answered, and the next one goes.
      await waitFor(() => net.framesOut.length >= 2, 5000, 'the next connect');
      assert.deepEqual(net.framesOut[1] && channelsOf(net.framesOut[1]), ['/meta/connect']);
      assert.ok(net.framesIn.some((frame) => channelsOf(frame).includes('/meta/connect')), 'the held connect was answered');
      assert.equal(c.state, 'connected');
    } finally {
      await c.disconnect();
    }
  });

  it('waits for the bundled connect as long as the server holds it, not its request timeout', async () => {
    const net = new Net();
    // Requests time out after 500 ms; the server holds connects 2 s: the bundled connect is given
    // the hold plus lineTimeout once the handshake's advice is known.
    const c = client(test.url, { transports: ['websocket'], timeout: 500, lineTimeout: 1000 }, net);
    const states: string[] = [];
    c.on('state', (change) => states.push(change.state));
    try {
      await c.subscribe('/setup/patient', () => {});
      await waitFor(() => net.framesIn.some((frame) => channelsOf(frame).includes('/meta/connect')), 4000, 'the held connect answered');
      assert.deepEqual(states, ['connecting', 'connected'], 'never lost its line');
      const handshakes = net.framesOut.filter((frame) => channelsOf(frame).includes('/meta/handshake'));
      assert.equal(handshakes.length, 1);
    } finally {
      await c.disconnect();
    }
  });

  it('works as well with a server that answers the bundled connect at once (as a first connect)', async () => {
    const firstSeen = new Set<unknown>();
    const remove = test.server.addExtension({
      incoming: (message) => {
        if (message.channel !== '/meta/connect' || firstSeen.has(message.clientId)) return message;
        firstSeen.add(message.clientId);
        return { ...message, advice: { timeout: 0 } };
      },
    });
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    try {
      await receiveFirst(test, c, '/setup/at-once');
      assert.equal(c.state, 'connected');
      await sleep(100);
      assert.deepEqual(net.framesOut.slice(0, 2).map(channelsOf), [['/meta/handshake', '/meta/subscribe', '/meta/connect'], ['/meta/connect']]);
      assert.deepEqual(net.framesIn.slice(0, 1).map(channelsOf), [['/meta/handshake', '/meta/subscribe', '/meta/connect']]);
    } finally {
      remove();
      await c.disconnect();
    }
  });

  it('falls back to a connect of its own when the server does not take the bundle (as Bayeux §4.1.1 has it)', async () => {
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    // As a server without bundles would: the handshake's ext.bundle goes unseen.
    c.addExtension({
      outgoing: (message) => {
        if (message.channel !== '/meta/handshake' || !message.ext) return message;
        const { bundle: _ignored, ...ext } = message.ext as Record<string, unknown>;
        return { ...message, ext };
      },
    });
    try {
      await receiveFirst(test, c, '/setup/b');
      assert.equal(c.state, 'connected');
      // The bundled subscribe and connect went unanswered; the client sent its own (its first
      // connect at once, then the held one with the subscribe).
      assert.deepEqual(net.framesOut.slice(0, 3).map(channelsOf), [['/meta/handshake', '/meta/subscribe', '/meta/connect'], ['/meta/connect'], ['/meta/connect', '/meta/subscribe']]);
    } finally {
      await c.disconnect();
    }
  });
});

describe('set-up against a server that fails a bundled handshake', () => {
  let test: TestServer;
  before(async () => {
    test = await startServer({ heartbeat: 1000 });
    // As CometD's server does with a request holding more than its handshake: the handshake fails.
    test.server.addExtension({ incoming: (message) => (message.channel === '/meta/handshake' && (message.ext as { bundle?: unknown } | undefined)?.bundle === true ? null : message) });
  });
  after(() => test.close());

  it('asks again without the bundle, and keeps to the plain set-up from then on', async () => {
    const net = new Net();
    const c = client(test.url, { transports: ['websocket'] }, net);
    try {
      await receiveFirst(test, c, '/setup/plain');
      const handshakes = net.framesOut.map((frame) => JSON.parse(frame) as { channel: string; ext?: { bundle?: boolean } }[]).flat().filter((m) => m.channel === '/meta/handshake');
      assert.deepEqual(
        handshakes.map((m) => m.ext?.bundle === true),
        [true, false],
      );
    } finally {
      await c.disconnect();
    }
  });
});
