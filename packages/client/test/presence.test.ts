/** The client's presence API against the real server: `presence()` and `onPresence()`. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Authenticator } from '@perihelion/server';
import { ClientError, type Client, type PresenceEvent } from '../src/index.js';
import { client, Net, sleep, startServer, waitFor, type TestServer } from './helpers.js';

// The handshake's token is the user id here (an application's authenticator would check it).
const authenticate: Authenticator = ({ message }) => {
  const token = message.ext?.token;
  return typeof token === 'string' ? { id: token, roles: [], claims: {} } : null;
};

describe('client presence', () => {
  let test: TestServer;
  const clients: Client[] = [];
  const open = (token?: string): Client => {
    const c = client(test.url, { transports: ['websocket'], ...(token !== undefined ? { token } : {}) });
    clients.push(c);
    return c;
  };

  before(async () => {
    test = await startServer({ authenticate, open: false, presenceGrace: 100, channels: [{ channel: '/private/**', subscribe: 'nobody' }] });
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.disconnect()));
    await test.close();
  });

  it('follows joins and leaves of a channel without naming /presence, and lists its members', async () => {
    const watcher = open();
    const seen: Array<[PresenceEvent, string]> = [];
    const subscription = await watcher.onPresence('/room/1', (event, channel) => seen.push([event, channel]));
    assert.equal(subscription.pattern, '/presence/room/1');

    const alice = open('alice');
    await alice.subscribe('/room/1', () => {});
    await waitFor(() => seen.length === 1, 3000, 'the join');
    assert.deepEqual(seen[0], [{ action: 'join', clientId: alice.clientId, user: 'alice' }, '/room/1']);
    assert.deepEqual(await watcher.presence('/room/1'), [{ clientId: alice.clientId, user: 'alice' }]);

    await alice.disconnect();
    await waitFor(() => seen.length === 2, 3000, 'the leave');
    assert.equal(seen[1]![0].action, 'leave');
    assert.deepEqual(await watcher.presence('/room/1'), []);
    await subscription.unsubscribe();
  });

  it('gives the watched channel of each event to a wildcard watcher', async () => {
    const watcher = open();
    const channels: string[] = [];
    await watcher.onPresence('/hall/*', (_event, channel) => channels.push(channel));
    const bob = open('bob');
    await bob.subscribe('/hall/a', () => {});
    await bob.subscribe('/hall/b', () => {});
    await waitFor(() => channels.length === 2, 3000, 'two joins');
    assert.deepEqual(channels.sort(), ['/hall/a', '/hall/b']);
  });

  it('rejects what the server refuses, and an invalid channel before sending', async () => {
    const c = open('carol');
    await assert.rejects(c.presence('/private/x'), (error: ClientError) => error.code === 'bayeux' && error.bayeuxCode === 403);
    await assert.rejects(c.presence('/room/*'), (error: ClientError) => error.code === 'bayeux' && error.bayeuxCode === 405);
    await assert.rejects(c.onPresence('/private/x', () => {}), (error: ClientError) => error.code === 'bayeux' && error.bayeuxCode === 403);
    await assert.rejects(c.onPresence('room', () => {}), (error: ClientError) => error.code === 'invalid-channel' && /"room"/.test(error.message));
  });
});

describe('client presence through reconnects', () => {
  for (const type of ['websocket', 'long-polling'] as const) {
    it(`${type}: a short cut, and one that outlives the session (a new session, re-subscribed within the grace), publish no leave and no join`, async () => {
      // Sessions expire about 1 s after their line goes; a leave waits 3 s for the member to come back.
      const test = await startServer({ authenticate, maxInterval: 1000, timeout: 2000, presenceGrace: 3000 });
      const net = new Net();
      const watcher = client(test.url, { transports: ['websocket'] });
      const alice = client(test.url, { transports: [type], token: 'alice' }, net);
      try {
        const seen: PresenceEvent[] = [];
        await watcher.onPresence('/room/r', (event) => seen.push(event));
        await alice.subscribe('/room/r', () => {});
        await waitFor(() => seen.length === 1, 3000, 'the join');
        const firstSession = alice.clientId!;

        // A short cut: the client comes back at once (on its session, or on a new one when its
        // first attempt to reopen a WebSocket failed while the network was still down).
        net.cut();
        await waitFor(() => alice.state === 'connecting', 3000, 'the client to notice the cut');
        net.restore();
        await waitFor(() => alice.state === 'connected', 5000, 'the client back');
        const beforeLongCut = alice.clientId!;

        // A long cut: the server forgets the session; the client handshakes again and re-subscribes.
        net.cut();
        await waitFor(() => alice.state === 'connecting', 3000, 'the client to notice the cut');
        await waitFor(() => test.server.getSession(beforeLongCut) === undefined, 5000, 'the session to expire');
        net.restore();
        await waitFor(() => alice.state === 'connected', 5000, 'the client back');
        assert.notEqual(alice.clientId, beforeLongCut, 'a new session');
        await waitFor(() => test.server.getSession(alice.clientId!)?.subscriptions.has('/room/r') === true, 5000, 're-subscribed');

        await sleep(3500); // past the grace of the expired session's leave
        assert.deepEqual(seen, [{ action: 'join', clientId: firstSession, user: 'alice' }], 'one join, nothing else');
        assert.deepEqual(await watcher.presence('/room/r'), [{ clientId: alice.clientId, user: 'alice' }]);

        await alice.disconnect();
        await waitFor(() => seen.length === 2, 5000, 'the leave once she is really gone');
        assert.equal(seen[1]!.action, 'leave');
      } finally {
        await Promise.allSettled([watcher.disconnect(), alice.disconnect()]);
        await test.close();
      }
    });
  }
});
