/**
 * Frames within the server's limits: the client learns them from the handshake reply, sends in
 * as many frames as they need what one turn issued (a hundred subscribes in one tick, a batch of
 * publishes), and refuses at once, as the server would, a message no frame could carry, instead
 * of sending a frame the server refuses whole (no reply to any message in it: calls pending for
 * ever, and over a WebSocket closed with 1009, a reconnection that sends it again).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ConnectionType } from '@perihelion/protocol';
import { replicate, ProposalError } from '@perihelion/state';
import { ClientError } from '../src/index.js';
import { DEFAULT_LIMITS, framesOf, readLimits } from '../src/limits.js';
import { client, Net, startServer, type TestServer } from './helpers.js';

describe('frame limits: units', () => {
  it('splits messages into the fewest frames within maxBatch and maxRequestBytes, in order', () => {
    const messages = Array.from({ length: 7 }, (_, i) => ({ channel: '/a', data: 'é'.repeat(10), id: String(i) }));
    assert.deepEqual(framesOf(messages, DEFAULT_LIMITS), [JSON.stringify(messages)], 'within the limits: one frame');
    const byCount = framesOf(messages, { ...DEFAULT_LIMITS, maxBatch: 3 });
    assert.deepEqual(byCount.map((frame) => (JSON.parse(frame) as unknown[]).length), [3, 3, 1]);
    const one = Buffer.byteLength(JSON.stringify(messages[0]));
    const byBytes = framesOf(messages, { ...DEFAULT_LIMITS, maxRequestBytes: 2 * one + 3 });
    assert.deepEqual(byBytes.map((frame) => (JSON.parse(frame) as unknown[]).length), [2, 2, 2, 1], 'two per frame: bytes counted as UTF-8');
    for (const frame of byBytes) assert.ok(Buffer.byteLength(frame) <= 2 * one + 3);
    assert.deepEqual(byBytes.flatMap((frame) => JSON.parse(frame) as unknown[]), messages, 'every message once, in order');
  });

  it('takes only sensible limits from the handshake reply', () => {
    assert.deepEqual(readLimits({ maxBatch: 10, maxRequestBytes: 'x', maxDepth: -1 }, DEFAULT_LIMITS), { ...DEFAULT_LIMITS, maxBatch: 10 });
    assert.deepEqual(readLimits(undefined, DEFAULT_LIMITS), DEFAULT_LIMITS);
    assert.deepEqual(readLimits('junk', DEFAULT_LIMITS), DEFAULT_LIMITS);
  });
});

describe('frame limits against the server', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ maxBatch: 10, maxRequestBytes: 64 * 1024, maxMessageBytes: 32 * 1024, maxDepth: 16 });
  });
  after(() => t.close());

  for (const type of ['websocket', 'long-polling'] as ConnectionType[]) {
    it(`${type}: 150 subscribes in the tick that starts the client, and 150 publishes in one turn, all answered (server maxBatch 10)`, async () => {
      const c = client(t.url, { transports: [type] });
      const states: string[] = [];
      // Changes only: an attempt refused while connecting is told too (its frame past the limits it had not learnt yet).
      c.on('state', (change) => void (change.previous !== change.state && states.push(change.state)));
      const subscribed = await Promise.all(Array.from({ length: 150 }, (_, i) => c.subscribe(`/many/${type}/${i}`, () => {})));
      assert.equal(subscribed.length, 150);
      assert.equal(t.server.getSession(c.clientId!)?.subscriptions.size, 150);
      const acks = await Promise.all(Array.from({ length: 150 }, (_, i) => c.publish(`/many/${type}/${i}`, { i })));
      assert.ok(acks.every((ack) => ack.successful === true));
      assert.deepEqual(states, ['connecting', 'connected'], 'one session, no reconnection');
    });

    it(`${type}: a publish no request could carry is refused at once, as the server would (413; 400 too deep); the session goes on`, async () => {
      const net = new Net();
      const c = client(t.url, { transports: [type] }, net);
      await c.connect();
      const clientId = c.clientId;
      const before = net.requests;
      await assert.rejects(c.publish('/big', 'x'.repeat(70 * 1024)), (error: unknown) => error instanceof ClientError && error.bayeuxCode === 413 && /more than the server takes in a request \(65536\)/.test(error.message));
      let deep: unknown = 'bottom';
      for (let i = 0; i < 20; i++) deep = [deep];
      await assert.rejects(c.publish('/deep', deep), (error: unknown) => error instanceof ClientError && error.bayeuxCode === 400 && /nested \d+ deep/.test(error.message));
      if (type === 'long-polling') assert.equal(net.requests, before, 'neither was sent');
      // Between maxMessageBytes and maxRequestBytes the server says no, for that message alone.
      await assert.rejects(c.publish('/big', 'x'.repeat(40 * 1024)), (error: unknown) => error instanceof ClientError && error.bayeuxCode === 413);
      assert.equal((await c.publish('/small', 'fine')).successful, true);
      assert.equal(c.clientId, clientId, 'the same session throughout');
      assert.equal(c.state, 'connected');
    });

    it(`${type}: a publish is serialised once on its way out, measured and sent as the same text`, async () => {
      const c = client(t.url, { transports: [type] });
      await c.connect();
      let got: (data: unknown) => void = () => {};
      const received = new Promise<unknown>((resolve) => (got = resolve));
      await c.subscribe(`/once/${type}`, (data) => got(data));
      let serialised = 0;
      // JSON.stringify calls toJSON each time it serialises the data.
      const data = { toJSON: () => (serialised++, { text: 'é'.repeat(100) }) };
      assert.equal((await Promise.all([c.publish(`/once/${type}`, data), c.publish(`/once/${type}/other`, { n: 1 })]))[0].successful, true);
      assert.deepEqual(await received, { text: 'é'.repeat(100) });
      assert.equal(serialised, 1);
      await c.disconnect();
    });
  }

  it('counts nesting as the server does: a message exactly maxDepth deep is sent and taken, one level more refused at once', async () => {
    const c = client(t.url, { transports: ['websocket'] });
    await c.connect();
    const nest = (levels: number): unknown => {
      let value: unknown = 'bottom';
      for (let i = 0; i < levels; i++) value = [value];
      return value;
    };
    // The message object is one level, its data the rest: 16 in all is the server's maxDepth here.
    assert.equal((await c.publish('/deep/ok', nest(15))).successful, true);
    await assert.rejects(c.publish('/deep/no', nest(16)), (error: unknown) => error instanceof ClientError && error.bayeuxCode === 400 && /nested 17 deep, more than the server takes \(16\)/.test(error.message));
    assert.equal(c.state, 'connected');
  });

  it('a state proposal no request could carry is refused at once, the value rolled back', async () => {
    const state = await t.server.state('/limits/doc', { text: '' }, { validate: () => true });
    const c = client(t.url, { transports: ['websocket'] });
    const replica = await replicate(c, '/limits/doc');
    await assert.rejects(
      replica.propose((draft) => void ((draft as { text: string }).text = 'x'.repeat(70 * 1024))),
      (error: unknown) => error instanceof ProposalError && /413/.test(String((error.cause as ClientError).bayeux)),
    );
    assert.deepEqual(replica.value, { text: '' });
    assert.equal(await replica.propose((draft) => void ((draft as { text: string }).text = 'short')), 1);
    assert.deepEqual(state.get(), { text: 'short' });
    await replica.close();
  });
});

describe('maxQueued bounds what waits offline only', () => {
  it('connected, 150 publishes in one turn are all sent (maxQueued 100)', async () => {
    const t = await startServer();
    try {
      const c = client(t.url, { transports: ['websocket'], maxQueued: 100 });
      await c.connect();
      const acks = await Promise.all(Array.from({ length: 150 }, (_, i) => c.publish('/queued', i)));
      assert.equal(acks.length, 150);
      // Offline, the bound holds.
      const net = new Net();
      const offline = client(t.url, { transports: ['long-polling'], maxQueued: 2, autoConnect: false }, net);
      const waiting = [offline.publish('/q', 1), offline.publish('/q', 2)];
      await assert.rejects(offline.publish('/q', 3), (error: unknown) => error instanceof ClientError && error.code === 'queue-full');
      await offline.disconnect();
      await Promise.allSettled(waiting);
    } finally {
      await t.close();
    }
  });
});
