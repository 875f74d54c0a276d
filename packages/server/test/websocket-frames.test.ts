/**
 * The frames of one WebSocket are processed one after another, in the order they came: a frame
 * whose handling has to wait (an asynchronous extension, a remote engine) holds the frames behind
 * it, so a client's publishes keep their order; a frame that comes while none is waiting is
 * handled at once. What waits is bounded (`maxPendingFrames`, `maxRequestBytes`): past it the
 * socket is not read until the frames are handled, and nothing is lost. Nor do the replies to a
 * client that does not read pile up in the server: while they cannot be sent, its socket is not
 * read either.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { RedisEngine } from '../src/index.js';
import { startServer, waitFor, WsPeer, type Msg } from './helpers.js';
import { deleteKeys, REDIS_URL, requireRedis, uniquePrefix } from './redis-fixture.js';

const HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] };

/**
 * Handshakes on `peer`, subscribes to `channel` and leaves a connect held, as a client waiting for
 * deliveries; resolves to its clientId.
 */
async function subscribedAndHeld(peer: WsPeer, channel: string): Promise<string> {
  const clientId = (await peer.request(HANDSHAKE)).clientId as string;
  assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: channel })).successful, true);
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 } }]);
  await peer.next((m) => m.channel === '/meta/connect', 'the first connect');
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  return clientId;
}

describe('WebSocket frames', () => {
  it('keep their order when one of them waits: publishes are delivered and answered in the order sent', async () => {
    const ts = await startServer();
    // Holds the publish whose data is "slow" for 150 ms; every other message passes at once.
    ts.server.addExtension({
      incoming: (message) => (message.data === 'slow' ? new Promise((resolve) => setTimeout(() => resolve(message), 150)) : message),
    });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const hello = await peer.request(HANDSHAKE);
      const clientId = hello.clientId as string;
      assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/order' })).successful, true);
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 } }]);
      await peer.next((m) => m.channel === '/meta/connect', 'the first connect');
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);

      // Three frames sent back to back: the first waits, the two behind it must not overtake it.
      const data = ['slow', 'fast-1', 'fast-2'];
      for (const [i, value] of data.entries()) peer.send([{ channel: '/order', clientId, data: value, id: `p${i}` }]);
      await peer.next((m) => m.id === 'p2', 'the reply to the last publish', 3000);
      await peer.next((m) => m.channel === '/order' && m.data === 'fast-2', 'the last delivery', 3000);

      const replies = peer.received.filter((m) => typeof m.id === 'string' && m.id.startsWith('p')).map((m) => m.id);
      assert.deepEqual(replies, ['p0', 'p1', 'p2'], 'publish replies in the order sent');
      // Deliveries carry data; the publish replies on the same channel do not.
      const delivered = peer.received.filter((m: Msg) => m.channel === '/order' && m.data !== undefined).map((m) => m.data);
      assert.deepEqual(delivered, data, 'deliveries in the order sent');

      // Nothing waits any more: a frame is answered on its own.
      assert.equal((await peer.request({ channel: '/order', clientId, data: 'after' })).successful, true);
    } finally {
      await peer.close();
      await ts.close();
    }
  });

  it('carry, for each subscriber, the messages of one turn it subscribed to, in one frame, however the others differ', async () => {
    const ts = await startServer();
    // Subscribers with the same messages share one frame; these differ after the first message,
    // or in how many they get: each must get its own.
    const plan: Record<string, string[]> = { ab: ['/t/a', '/t/b'], ab2: ['/t/a', '/t/b'], ac: ['/t/a', '/t/c'], abc: ['/t/a', '/t/b', '/t/c'], b: ['/t/b'] };
    const peers = new Map<string, WsPeer>();
    try {
      for (const [name, channels] of Object.entries(plan)) {
        const peer = await WsPeer.open(ts.wsUrl);
        peers.set(name, peer);
        const clientId = (await peer.request(HANDSHAKE)).clientId as string;
        for (const subscription of channels) assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription })).successful, true);
        peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 } }]);
        await peer.next((m) => m.channel === '/meta/connect', 'the first connect');
        peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
      }
      await sleep(50);
      for (const peer of peers.values()) peer.frames.length = 0;

      // One turn, three publications, each to a different set of subscribers (same length, other data).
      void ts.server.publish('/t/a', 'A');
      void ts.server.publish('/t/b', 'B');
      void ts.server.publish('/t/c', 'C');
      const expected: Record<string, string[]> = { ab: ['A', 'B'], ab2: ['A', 'B'], ac: ['A', 'C'], abc: ['A', 'B', 'C'], b: ['B'] };
      for (const [name, peer] of peers) {
        await waitFor(() => peer.frames.length >= 1, 3000, `a frame for ${name}`);
        await sleep(20);
        assert.equal(peer.frames.length, 1, `${name}: one frame`);
        const frame = peer.frames[0] as Msg[];
        assert.deepEqual(frame.map((m) => m.data), expected[name], `${name}: its messages, in order`);
        assert.deepEqual(frame.map((m) => m.channel), expected[name]!.map((d) => `/t/${d.toLowerCase()}`), `${name}: their channels`);
      }
    } finally {
      for (const peer of peers.values()) await peer.close();
      await ts.close();
    }
  });

  it('carry every message whole, whatever its size and script: at each length the frame header changes, and past what is encoded in one pass', { timeout: 30_000 }, async () => {
    const ts = await startServer({ maxMessageBytes: 1_000_000 });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      await subscribedAndHeld(peer, '/sizes');

      // The envelope around the data ({"channel":"/sizes","data":"…","ext":{"position":…}}) is
      // about 70 bytes: these lengths put frames on both sides of 126 and 65 536 bytes.
      const data: string[] = [];
      for (const length of [0, 1, 50, 54, 55, 56, 57, 60, 65_440, 65_460, 65_470, 65_480, 200_000]) data.push('a'.repeat(length));
      // Two and four bytes per character (a surrogate pair is two UTF-16 units): some within the
      // one-pass buffer, some past it.
      for (const length of [10, 21_000, 22_000, 40_000]) data.push('é'.repeat(length), '\u{1F600}'.repeat(length / 2), `a${'€'.repeat(length)}z`);
      for (const value of data) {
        peer.frames.length = 0;
        void ts.server.publish('/sizes', value);
        await waitFor(() => peer.frames.length >= 1, 5000, `the frame of ${value.length} units`);
        const delivered = (peer.frames[0] as Msg[]).map((m) => m.data);
        assert.equal(delivered.length, 1);
        assert.ok(delivered[0] === value, `${value.length} units of ${JSON.stringify(value.slice(0, 2))} came back whole`);
      }
    } finally {
      await peer.close();
      await ts.close();
    }
  });

  it('stop being read while more than maxPendingFrames wait, and are all handled, in order, once the wait is over', { timeout: 30_000 }, async () => {
    const ts = await startServer({ maxPendingFrames: 4 });
    // Every publish waits at this gate until it opens (an asynchronous extension, or engine, that is slow).
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let gateOpen = false;
    ts.server.addExtension({
      incoming: (message) => (message.channel === '/big' && !gateOpen ? gate.then(() => message) : message),
    });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const clientId = (await peer.request(HANDSHAKE)).clientId as string;
      // 100 frames of 200 KB: 20 MB, more than the kernel's socket buffers hold on loopback.
      const data = 'x'.repeat(200_000);
      const count = 100;
      for (let i = 0; i < count; i++) peer.send([{ channel: '/big', clientId, data, id: `b${i}` }]);
      await sleep(500);
      assert.ok(ts.server.stats().readsPaused >= 1, 'the socket stopped being read');
      assert.ok(peer.ws.bufferedAmount > 1_000_000, `the rest waits on the client's side (${peer.ws.bufferedAmount} bytes unsent), not in the server's memory`);
      assert.equal(peer.received.filter((m) => m.channel === '/big').length, 0, 'nothing answered while the gate is shut');

      gateOpen = true;
      open();
      await waitFor(() => peer.received.filter((m) => m.channel === '/big').length === count, 20_000, 'every publish answered');
      const replies = peer.received.filter((m) => m.channel === '/big');
      assert.deepEqual(
        replies.map((m) => m.id),
        Array.from({ length: count }, (_, i) => `b${i}`),
        'every frame handled, in the order sent',
      );
      assert.ok(replies.every((m) => m.successful === true), 'every publish succeeded');
      assert.equal(peer.ws.bufferedAmount, 0, 'the client sent everything');
      // Read again: a frame now is handled at once.
      assert.equal((await peer.request({ channel: '/big', clientId, data: 'after' })).successful, true);
    } finally {
      await peer.close();
      await ts.close();
    }
  });
});

describe('WebSocket replies to a client that does not read', () => {
  it('stop its socket being read until they drain, and all arrive, in order, once it reads', { timeout: 30_000 }, async () => {
    const ts = await startServer({ maxBufferedBytes: 64 * 1024 });
    // Every reply to a publish on /echo is padded to 200 KB (an outgoing extension adding data to it).
    const pad = 'p'.repeat(200_000);
    let repliesMade = 0;
    ts.server.addExtension({
      outgoing: (message) => {
        if (message.channel !== '/echo' || message.successful === undefined) return message;
        repliesMade++;
        return { ...message, ext: { pad } };
      },
    });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const clientId = (await peer.request(HANDSHAKE)).clientId as string;
      // The client stops reading, then sends 100 publishes of 200 KB: 20 MB of replies are due.
      peer.ws.pause();
      const data = 'x'.repeat(200_000);
      const count = 100;
      for (let i = 0; i < count; i++) peer.send([{ channel: '/echo', clientId, data, id: `e${i}` }]);
      await sleep(1000);
      assert.ok(ts.server.stats().readsPaused >= 1, 'the socket stopped being read');
      assert.ok(repliesMade < count, `the server stopped taking frames it cannot answer (${repliesMade} of ${count} answered)`);
      assert.ok(peer.ws.bufferedAmount > 1_000_000, `the rest waits on the client's side (${peer.ws.bufferedAmount} bytes unsent)`);

      peer.ws.resume();
      await waitFor(() => peer.received.filter((m) => m.channel === '/echo').length === count, 20_000, 'every publish answered');
      const replies = peer.received.filter((m) => m.channel === '/echo');
      assert.deepEqual(
        replies.map((m) => m.id),
        Array.from({ length: count }, (_, i) => `e${i}`),
        'every frame answered, in the order sent',
      );
      assert.ok(replies.every((m) => m.successful === true && (m.ext as { pad?: string }).pad === pad), 'every reply whole');
      assert.equal(peer.ws.bufferedAmount, 0, 'the client sent everything');
      assert.equal((await peer.request({ channel: '/echo', clientId, data: 'after' })).successful, true, 'read again');
    } finally {
      peer.ws.resume();
      await peer.close();
      await ts.close();
    }
  });

  it('and a socket left so, never reading again, is still ended by the idle sweep (its pongs are not asked for meanwhile)', { timeout: 30_000 }, async () => {
    // The idle limit here: 300 + 0 + 1 000 ms + the 5 s margin; pings every 500 ms.
    const ts = await startServer({ maxBufferedBytes: 64 * 1024, timeout: 300, maxInterval: 1000, pingInterval: 500 });
    const pad = 'p'.repeat(200_000);
    ts.server.addExtension({ outgoing: (message) => (message.channel === '/echo' && message.successful !== undefined ? { ...message, ext: { pad } } : message) });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const clientId = (await peer.request(HANDSHAKE)).clientId as string;
      peer.ws.pause();
      const data = 'x'.repeat(200_000);
      for (let i = 0; i < 100; i++) peer.send([{ channel: '/echo', clientId, data, id: `e${i}` }]);
      await waitFor(() => ts.server.stats().readsPaused >= 1, 5000, 'the socket to stop being read');
      // Past the idle limit and its sweep, the server has ended the socket; the client sees it once it reads.
      await sleep(10_000);
      peer.ws.resume();
      await waitFor(() => peer.closeCode !== null, 5000, 'the socket to be found ended');
      assert.ok(peer.received.filter((m) => m.channel === '/echo').length < 100, 'not every reply was kept for it');
    } finally {
      peer.ws.resume();
      await peer.close();
      await ts.close();
    }
  });

  it('nor do pongs: a client that pings without reading the pongs is cut off, and the server serves on', { timeout: 30_000 }, async () => {
    // ws answers each ping with a pong on its own; it keeps a bounded number of them unsent
    // (maxPendingAutoPongs, ws 8.23) and ends a socket past it, which the server relies on.
    const ts = await startServer();
    const flooder = await WsPeer.open(ts.wsUrl);
    const other = await WsPeer.open(ts.wsUrl);
    try {
      flooder.ws.pause();
      const payload = Buffer.alloc(125, 1);
      for (let i = 0; i < 200_000; i++) flooder.ws.ping(payload);
      await waitFor(() => flooder.closeCode !== null, 10_000, 'the flooding socket closed');
      assert.equal(flooder.closeCode, 1006, 'cut off without a close frame');
      assert.equal((await other.request(HANDSHAKE)).successful, true, 'another client still served');
    } finally {
      await other.close();
      await ts.close();
    }
  });

  it('with maxBufferedBytes below the socket\'s own buffer, a congested line is written again once it drains', { timeout: 30_000 }, async () => {
    // 1 KB unsent makes the line congested, while Node's socket reports a drain only past 16 KB.
    const ts = await startServer({ maxBufferedBytes: 1024, maxQueue: 20_000, publishRate: 0 });
    const subscriber = await WsPeer.open(ts.wsUrl);
    const publisher = await WsPeer.open(ts.wsUrl);
    try {
      await subscribedAndHeld(subscriber, '/slow');
      await sleep(50);

      // The subscriber stops reading while 10 000 messages of 2 KB are published: once the
      // kernel's buffers are full, the line is congested and the rest waits in the session's queue.
      subscriber.ws.pause();
      const publisherId = (await publisher.request(HANDSHAKE)).clientId as string;
      const data = 'd'.repeat(2000);
      const count = 10_000;
      for (let i = 0; i < count; i++) publisher.send([{ channel: '/slow', clientId: publisherId, data: `${i}:${data}`, id: `s${i}` }]);
      await publisher.next((m) => m.id === `s${count - 1}`, 'the last publish answered', 10_000);
      await sleep(300);

      subscriber.ws.resume();
      const delivered = (): Msg[] => subscriber.received.filter((m) => m.channel === '/slow' && m.data !== undefined);
      await waitFor(() => delivered().length === count, 10_000, () => `every delivery arrived (${delivered().length} of ${count})`);
      assert.deepEqual(
        delivered().map((m) => Number(String(m.data).split(':')[0])),
        Array.from({ length: count }, (_, i) => i),
        'each once, in the order published',
      );
    } finally {
      subscriber.ws.resume();
      await subscriber.close();
      await publisher.close();
      await ts.close();
    }
  });
});

describe('WebSocket frames on the Redis engine (every publish waits for Redis)', () => {
  before(requireRedis);

  it('are read no faster than they are handled, and every publish of a flood is delivered once, in order', { timeout: 60_000 }, async () => {
    const prefix = uniquePrefix('ws-frames');
    const ts = await startServer({ engine: new RedisEngine({ url: REDIS_URL, prefix }), open: true, publishRate: 0, maxPendingFrames: 4 });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const clientId = await subscribedAndHeld(peer, '/flood');

      // A client that sends 2 000 publishes, each in a frame of its own, as fast as it can.
      const count = 2000;
      for (let i = 0; i < count; i++) peer.send([{ channel: '/flood', clientId, data: i, id: `f${i}` }]);
      const delivered = (): unknown[] => peer.received.filter((m) => m.channel === '/flood' && m.data !== undefined).map((m) => m.data);
      await waitFor(() => delivered().length >= count, 45_000, () => `every publish delivered (${delivered().length} of ${count})`);

      assert.deepEqual(delivered(), Array.from({ length: count }, (_, i) => i), 'each once, in the order sent');
      const replies = peer.received.filter((m) => typeof m.id === 'string' && m.id.startsWith('f'));
      assert.equal(replies.length, count, 'every publish answered');
      assert.ok(replies.every((m) => m.successful === true), 'every publish succeeded');
      assert.ok(ts.server.stats().readsPaused >= 1, 'the socket was not read while more than 4 frames waited');
    } finally {
      await peer.close();
      await ts.close();
      await deleteKeys(prefix);
    }
  });
});
