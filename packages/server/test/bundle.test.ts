/**
 * The bundled set-up (core/dispatch.ts): a handshake carrying `ext.bundle: true` has the messages
 * after it in the same request or frame acted on for the session it makes, and answered with it.
 * Without the flag, and for whatever names another session, §4.1.1 still holds: ignored.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { handshake, post, sessionRecord, startServer, WsPeer, type Msg, type TestServer } from './helpers.js';

const BUNDLED_HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket', 'long-polling'], ext: { bundle: true }, id: 'h' };

describe('bundled set-up: handshake, connect and subscribe in one request', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 1500 });
  });
  after(() => ts.close());

  it('over a WebSocket: one frame in, one frame out, and the session is subscribed and pushed to', async () => {
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      peer.send([
        BUNDLED_HANDSHAKE,
        { channel: '/meta/connect', connectionType: 'websocket', advice: { timeout: 0 }, id: 'c' },
        { channel: '/meta/subscribe', subscription: '/bundle/ws', id: 's' },
      ]);
      const subscribed = await peer.next((m) => m.id === 's', 'the subscribe reply');
      assert.equal(peer.frames.length, 1, `answered in one frame: ${JSON.stringify(peer.frames)}`);
      const [hs, connect] = peer.frames[0] as Msg[];
      assert.equal(hs!.successful, true);
      assert.deepEqual(hs!.ext, { bundle: true }, 'the reply says the bundle was taken');
      const clientId = hs!.clientId as string;
      assert.equal(connect!.successful, true);
      assert.equal(connect!.clientId, clientId);
      assert.equal(subscribed.successful, true);
      assert.equal(subscribed.clientId, clientId);
      assert.ok(sessionRecord(ts.server, clientId)?.subscriptions.has('/bundle/ws'));
      await ts.server.publish('/bundle/ws', 'pushed');
      const delivery = await peer.next((m) => m.channel === '/bundle/ws', 'the delivery');
      assert.equal(delivery.data, 'pushed');
    } finally {
      peer.ws.close();
    }
  });

  it('over a WebSocket, a bundled connect that does not ask for timeout 0 is held: one frame each way sets the session up', async () => {
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      peer.send([BUNDLED_HANDSHAKE, { channel: '/meta/subscribe', subscription: '/bundle/held-first', id: 's' }, { channel: '/meta/connect', connectionType: 'websocket', id: 'c' }]);
      await peer.next((m) => m.id === 's', 'the subscribe reply');
      await sleep(200);
      assert.deepEqual(
        peer.frames.map((frame) => (frame as Msg[]).map((m) => m.id)),
        [['h', 's']],
        'the handshake and subscribe answered in one frame, the connect held',
      );
      const clientId = (peer.frames[0] as Msg[])[0]!.clientId as string;
      await ts.server.publish('/bundle/held-first', 'pushed');
      assert.equal((await peer.next((m) => m.channel === '/bundle/held-first', 'the delivery')).data, 'pushed');
      assert.equal(
        peer.received.some((m) => m.id === 'c'),
        false,
        'a delivery on a WebSocket does not answer the held connect',
      );
      // Held until the server's timeout (1.5 s), then answered like any held connect.
      const connect = await peer.next((m) => m.id === 'c', 'the held connect, answered at its timeout', 4000);
      assert.equal(connect.successful, true);
      assert.equal(connect.clientId, clientId);
      assert.equal((connect.advice as { reconnect?: string }).reconnect, 'retry');
      // The session lives on: its next connect is held too.
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: 'c2' }]);
      await sleep(300);
      assert.equal(
        peer.received.some((m) => m.id === 'c2'),
        false,
        'the next connect is held',
      );
      assert.ok(ts.server.getSession(clientId));
    } finally {
      peer.ws.close();
    }
  });

  it('a bundle of several connects on a WebSocket holds only the last: the others are answered at once, flagged multiple-clients', async () => {
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      peer.send([
        BUNDLED_HANDSHAKE,
        { channel: '/meta/connect', connectionType: 'websocket', id: 'c1' },
        { channel: '/meta/connect', connectionType: 'websocket', id: 'c2' },
        { channel: '/meta/connect', connectionType: 'websocket', id: 'c3' },
      ]);
      for (const id of ['c1', 'c2']) {
        const released = await peer.next((m) => m.id === id, `connect ${id}, released by the next one`);
        assert.equal(released.successful, true);
        assert.equal((released.advice as Record<string, unknown>)['multiple-clients'], true);
      }
      await sleep(300);
      assert.equal(
        peer.received.some((m) => m.id === 'c3'),
        false,
        'the last connect is held',
      );
      // The server goes on serving everyone else.
      assert.equal(typeof (await handshake(ts.url)), 'string');
    } finally {
      peer.ws.close();
    }
  });

  it('a bundled connect over HTTP is still answered at once (it shares its request)', async () => {
    const { body } = await post(ts.url, [
      { ...BUNDLED_HANDSHAKE, supportedConnectionTypes: ['long-polling'] },
      { channel: '/meta/subscribe', subscription: '/bundle/http-first', id: 's' },
      { channel: '/meta/connect', connectionType: 'long-polling', id: 'c' },
    ]);
    assert.deepEqual(
      body.map((m) => m.id),
      ['h', 's', 'c'],
    );
  });

  it('over HTTP: one response answers all three, and the next connect collects what was published', async () => {
    const { body } = await post(ts.url, [
      { ...BUNDLED_HANDSHAKE, supportedConnectionTypes: ['long-polling'] },
      { channel: '/meta/connect', connectionType: 'long-polling', id: 'c' },
      { channel: '/meta/subscribe', subscription: '/bundle/http', id: 's' },
    ]);
    assert.deepEqual(
      body.map((m) => [m.id, m.successful]),
      [
        ['h', true],
        ['c', true],
        ['s', true],
      ],
    );
    const clientId = body[0]!.clientId as string;
    assert.equal(body[2]!.clientId, clientId);
    await ts.server.publish('/bundle/http', 'polled');
    const { body: next } = await post(ts.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    assert.deepEqual(
      next.filter((m) => m.channel === '/bundle/http').map((m) => m.data),
      ['polled'],
    );
  });

  it('still ignores, unanswered, what names another session, a second handshake and what is not a message', async () => {
    const other = await handshake(ts.url);
    const before = ts.server.sessionCount;
    const { body } = await post(ts.url, [
      { ...BUNDLED_HANDSHAKE, supportedConnectionTypes: ['long-polling'] },
      { channel: '/meta/subscribe', clientId: other, subscription: '/bundle/sneaky', id: 'sneak' },
      { channel: '/meta/disconnect', clientId: other, id: 'd' },
      { ...BUNDLED_HANDSHAKE, id: 'h2' },
      42,
      { channel: '/meta/subscribe', subscription: '/bundle/own', id: 'own' },
    ]);
    assert.deepEqual(
      body.map((m) => m.id),
      ['h', 'own'],
      `only the handshake and the session's own message are answered: ${JSON.stringify(body)}`,
    );
    assert.equal(ts.server.sessionCount, before + 1, 'one session made');
    assert.ok(ts.server.getSession(other), 'the other session was not disconnected');
    assert.equal(sessionRecord(ts.server, other)?.subscriptions.has('/bundle/sneaky'), false);
  });

  it('a refused handshake acts on nothing after it', async () => {
    const before = ts.server.sessionCount;
    const { body } = await post(ts.url, [
      { ...BUNDLED_HANDSHAKE, version: undefined },
      { channel: '/meta/connect', connectionType: 'long-polling', id: 'c' },
      { channel: '/bundle/publish', data: 'x', id: 'p' },
    ]);
    assert.equal(body.length, 1);
    assert.equal(body[0]!.successful, false);
    assert.equal(body[0]!.ext, undefined, 'no bundle taken');
    assert.equal(ts.server.sessionCount, before);
  });

  it('without ext.bundle the handshake stays alone (§4.1.1)', async () => {
    const { body } = await post(ts.url, [
      { ...BUNDLED_HANDSHAKE, ext: undefined, supportedConnectionTypes: ['long-polling'] },
      { channel: '/meta/subscribe', subscription: '/bundle/plain', id: 's' },
    ]);
    assert.deepEqual(
      body.map((m) => m.id),
      ['h'],
    );
    assert.equal(body[0]!.ext, undefined);
    assert.equal(sessionRecord(ts.server, body[0]!.clientId as string)?.subscriptions.size, 0);
  });

  it('a connect that shares a WebSocket frame with other messages is still held (their replies do not wait for it)', async () => {
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      peer.send([BUNDLED_HANDSHAKE, { channel: '/meta/connect', connectionType: 'websocket', advice: { timeout: 0 }, id: 'c' }]);
      const clientId = (await peer.next((m) => m.id === 'h', 'the handshake reply')).clientId as string;
      await peer.next((m) => m.id === 'c', 'the first connect reply');
      peer.send([
        { channel: '/meta/connect', clientId, connectionType: 'websocket', id: 'held' },
        { channel: '/meta/subscribe', clientId, subscription: '/bundle/held', id: 's2' },
      ]);
      await peer.next((m) => m.id === 's2', 'the subscribe reply');
      await sleep(300);
      assert.equal(
        peer.received.some((m) => m.id === 'held'),
        false,
        'the connect was answered at once',
      );
      // Held until the server's timeout (1.5 s), then answered.
      await peer.next((m) => m.id === 'held', 'the held connect, answered at its timeout', 4000);
    } finally {
      peer.ws.close();
    }
  });
});
