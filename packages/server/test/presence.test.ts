/**
 * Presence end to end, with raw Bayeux clients over WebSocket: join and leave events on
 * /presence<channel> (per user and per session), the grace that hides a reload, the option that
 * turns it off, who may watch and who may never publish there, the /service/presence request,
 * `server.presence()`, and two nodes on one Redis (a join seen across nodes, a reload onto the
 * other node, the members of a session held by the other node).
 */
import { afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RedisEngine, type Authenticator, type Message, type ServerOptions } from '../src/index.js';
import { WsPeer, errorOf, startServer, waitFor, type Msg, type TestServer } from './helpers.js';
import { REDIS_URL, deleteKeys, requireRedis, uniquePrefix } from './redis-fixture.js';

// A handshake may name its user in ext.user (an application's authenticator, as in security.md).
const authenticate: Authenticator = ({ message }) => {
  const user = message.ext?.user;
  return typeof user === 'string' ? { id: user, roles: [], claims: {} } : null;
};

interface Client {
  peer: WsPeer;
  clientId: string;
  /** Presence events received on /presence<channel>, in order. */
  events(channel: string): Msg[];
  subscribe(subscription: string | string[]): Promise<Msg>;
  unsubscribe(subscription: string): Promise<Msg>;
  publish(channel: string, data: unknown): Promise<Msg>;
  /** A /service/presence request: the publish reply, and the answer when there is one. */
  ask(data: unknown): Promise<{ reply: Msg; answer: Msg | undefined }>;
  disconnect(): Promise<void>;
}

const peers: WsPeer[] = [];

async function open(node: TestServer, user?: string): Promise<Client> {
  const peer = await WsPeer.open(node.wsUrl);
  peers.push(peer);
  const reply = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ...(user !== undefined ? { ext: { user } } : {}) });
  assert.equal(reply.successful, true, JSON.stringify(reply));
  const clientId = reply.clientId as string;
  await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  let asked = 0;
  return {
    peer,
    clientId,
    events: (channel) => peer.received.filter((m) => m.channel === `/presence${channel}` && m.data !== undefined),
    subscribe: (subscription) => peer.request({ channel: '/meta/subscribe', clientId, subscription }),
    unsubscribe: (subscription) => peer.request({ channel: '/meta/unsubscribe', clientId, subscription }),
    publish: (channel, data) => peer.request({ channel, clientId, data }),
    async ask(data) {
      const id = `ask${++asked}`;
      peer.send([{ channel: '/service/presence', clientId, data, id }]);
      const reply = await peer.next((m) => m.id === id && m.data === undefined, 'the reply to a presence request');
      if (reply.successful !== true) return { reply, answer: undefined };
      const answer = await peer.next((m) => m.id === id && m.data !== undefined, 'the answer to a presence request');
      return { reply, answer };
    },
    async disconnect() {
      await peer.request({ channel: '/meta/disconnect', clientId });
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Each event as "<action> <user>", in order. */
function actions(events: Msg[]): string[] {
  return events.map((m) => {
    const data = m.data as { action: string; user: string | null };
    return `${data.action} ${data.user ?? 'anonymous'}`;
  });
}

const GRACE = 300;

describe('presence', () => {
  const servers: TestServer[] = [];
  const start = async (options: ServerOptions = {}): Promise<TestServer> => {
    const t = await startServer({ authenticate, presenceGrace: GRACE, ...options });
    servers.push(t);
    return t;
  };
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
    await Promise.all(servers.splice(0).map((t) => t.close()));
  });

  it('publishes join when a session subscribes to a channel, and leave after the grace when it unsubscribes', async () => {
    const t = await start();
    const heard: Message[] = [];
    t.server.subscribe('/presence/**', (message) => void heard.push(message));
    const watcher = await open(t);
    assert.equal((await watcher.subscribe('/presence/chat/room1')).successful, true);
    const alice = await open(t, 'alice');
    await alice.subscribe('/chat/room1');
    await watcher.peer.next((m) => m.channel === '/presence/chat/room1', 'the join');
    assert.deepEqual(watcher.events('/chat/room1')[0]!.data, { action: 'join', clientId: alice.clientId, user: 'alice' });
    assert.deepEqual(heard[0]?.data, { action: 'join', clientId: alice.clientId, user: 'alice' }, 'in-process listeners hear it too');

    const left = Date.now();
    await alice.unsubscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'the leave');
    assert.ok(Date.now() - left >= GRACE - 20, 'the leave waited for the grace');
    assert.deepEqual(watcher.events('/chat/room1')[1]!.data, { action: 'leave', clientId: alice.clientId, user: 'alice' });
    assert.equal(heard.length, 2);
  });

  it('publishes no event nothing could see (nobody watches, nobody was given a position), and every event once a watcher came, gone or not', async () => {
    const t = await start({ presenceGrace: 0 });
    const alice = await open(t, 'alice');
    await alice.subscribe('/quiet/room');
    await alice.unsubscribe('/quiet/room');
    await sleep(100);
    assert.deepEqual(await t.server.history('/presence/quiet/room'), { complete: true, messages: [], position: null }, 'no history made for events nobody could see');
    assert.deepEqual(await t.server.presence('/quiet/room'), [], 'membership is kept all the same');
    await alice.subscribe('/quiet/room');
    assert.deepEqual((await t.server.presence('/quiet/room')).map((m) => m.user), ['alice']);
    // A watcher comes and goes: what follows is kept for its recovery.
    const watcher = await open(t);
    const subscribed = await watcher.subscribe('/presence/quiet/room');
    const since = (subscribed.ext as { positions: Record<string, unknown> }).positions['/presence/quiet/room'];
    assert.ok(since, 'the watcher was given a position');
    await watcher.unsubscribe('/presence/quiet/room');
    await alice.unsubscribe('/quiet/room');
    let kept = await t.server.history('/presence/quiet/room');
    for (let tries = 0; (kept?.messages.length ?? 0) < 1 && tries < 50; tries++) {
      await sleep(50);
      kept = await t.server.history('/presence/quiet/room');
    }
    assert.deepEqual(kept?.messages.map((m) => m.data), [{ action: 'leave', clientId: alice.clientId, user: 'alice' }]);
  });

  it('counts a user once across its sessions, an anonymous session on its own, and not a wildcard subscriber', async () => {
    const t = await start();
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/*');
    const tab1 = await open(t, 'alice');
    const tab2 = await open(t, 'alice');
    const guest = await open(t);
    const observer = await open(t, 'bob');
    await tab1.subscribe('/chat/room1');
    await tab2.subscribe('/chat/room1');
    await guest.subscribe('/chat/room1');
    await observer.subscribe('/chat/*');
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'two joins');
    await sleep(100);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice', 'join anonymous']);
    assert.equal((watcher.events('/chat/room1')[1]!.data as Msg).clientId, guest.clientId);

    // One of alice's tabs goes: she is still there.
    await tab1.disconnect();
    await sleep(GRACE + 200);
    assert.equal(watcher.events('/chat/room1').length, 2);
    // Her last one goes: she leaves; the guest's session ending is its own leave.
    await tab2.unsubscribe('/chat/room1');
    await guest.disconnect();
    await waitFor(() => watcher.events('/chat/room1').length === 4, 3000, 'two leaves');
    const leaves = watcher.events('/chat/room1').slice(2).map((m) => m.data as Msg);
    assert.deepEqual(leaves.map((d) => d.user).sort((a, b) => String(a).localeCompare(String(b))), ['alice', null]);
    assert.equal(leaves.find((d) => d.user === 'alice')!.clientId, tab2.clientId, 'the leave names the last session');
    assert.deepEqual(await t.server.presence('/chat/room1'), []);
  });

  it('publishes one join and one leave when two sessions of a user subscribe and end at the same moment', async () => {
    const t = await start();
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const tab1 = await open(t, 'alice');
    const tab2 = await open(t, 'alice');
    await Promise.all([tab1.subscribe('/chat/room1'), tab2.subscribe('/chat/room1')]);
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await Promise.all([tab1.disconnect(), tab2.disconnect()]);
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'the leave');
    await sleep(GRACE + 200);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice', 'leave alice']);
  });

  it('with presenceBy "session", every session joins and leaves on its own', async () => {
    const t = await start({ presenceBy: 'session' });
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const tab1 = await open(t, 'alice');
    const tab2 = await open(t, 'alice');
    await tab1.subscribe('/chat/room1');
    await tab2.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'two joins');
    assert.deepEqual(
      watcher.events('/chat/room1').map((m) => (m.data as Msg).clientId),
      [tab1.clientId, tab2.clientId],
    );
    assert.equal((await t.server.presence('/chat/room1')).length, 2);
    // A session that unsubscribes may come back within the grace...
    await tab2.unsubscribe('/chat/room1');
    await tab2.subscribe('/chat/room1');
    // ...one that ended cannot: its leave needs no grace.
    await tab1.disconnect();
    await waitFor(() => watcher.events('/chat/room1').length === 3, 3000, 'the leave');
    await sleep(GRACE + 200);
    assert.deepEqual(watcher.events('/chat/room1').slice(2).map((m) => m.data), [{ action: 'leave', clientId: tab1.clientId, user: 'alice' }]);
  });

  it('publishes nothing when a member unsubscribes and subscribes again within the grace', async () => {
    const t = await start();
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const alice = await open(t, 'alice');
    await alice.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await alice.unsubscribe('/chat/room1');
    await alice.subscribe('/chat/room1');
    await sleep(GRACE + 300);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice']);
  });

  it('publishes nothing for a reload: the session ends and a new one of the same user subscribes within the grace', async () => {
    const t = await start();
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const before = await open(t, 'alice');
    await before.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await before.disconnect();
    const after = await open(t, 'alice');
    await after.subscribe('/chat/room1');
    await sleep(GRACE + 300);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice']);
    assert.deepEqual(await t.server.presence('/chat/room1'), [{ clientId: after.clientId, user: 'alice' }]);
    // Then she really goes: one leave, once the grace is over.
    await after.disconnect();
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'the leave');
    assert.deepEqual(watcher.events('/chat/room1')[1]!.data, { action: 'leave', clientId: after.clientId, user: 'alice' });
  });

  it('publishes leave once the grace is over when the member does not come back, and join when it comes back later', async () => {
    const t = await start();
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const first = await open(t, 'alice');
    await first.subscribe('/chat/room1');
    await first.disconnect();
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'join and leave');
    const later = await open(t, 'alice');
    await later.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 3, 3000, 'the second join');
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice', 'leave alice', 'join alice']);
  });

  it('does nothing with presence: false (no events, no service)', async () => {
    const t = await start({ presence: false, open: false });
    const heard: Message[] = [];
    t.server.subscribe('/presence/**', (message) => void heard.push(message));
    const watcher = await open(t);
    await watcher.subscribe('/presence/chat/room1');
    const alice = await open(t, 'alice');
    await alice.subscribe('/chat/room1');
    await alice.disconnect();
    await sleep(GRACE + 200);
    assert.deepEqual(watcher.events('/chat/room1'), []);
    assert.deepEqual(heard, []);
    // /service/presence is an ordinary service channel then: clients need a rule to publish there.
    const { reply } = await watcher.ask({ channel: '/chat/room1' });
    assert.equal(errorOf(reply).code, 403);
    // And /presence/** an ordinary channel, which the rules (none here) keep to the server.
    assert.equal(errorOf(await watcher.publish('/presence/chat/room1', 'x')).code, 403);
  });

  describe('authorization', () => {
    const rules = [
      { channel: '/private/**', subscribe: 'nobody' },
      { channel: '/staff/**', subscribe: 'role:staff' },
      { channel: '/**', publish: 'anyone' },
    ];
    const secured = (): Promise<TestServer> => start({ open: false, channels: rules });

    it('lets a client watch the presence of a channel exactly when it may subscribe to the channel', async () => {
      const t = await secured();
      const c = await open(t, 'alice');
      assert.equal((await c.subscribe('/presence/chat/room1')).successful, true);
      assert.equal((await c.subscribe('/presence/chat/*')).successful, true);
      for (const refused of ['/presence/private/x', '/presence/private/*', '/presence/**', '/presence/staff/room']) {
        const reply = await c.subscribe(refused);
        assert.equal(reply.successful, false, refused);
        const error = errorOf(reply);
        assert.equal(error.code, 403, refused);
        assert.match(error.message, /presence of \/(private|staff|\*\*)/, refused);
      }
      assert.equal(errorOf(await c.subscribe('/presence/meta/connect')).code, 403, 'meta channels have no presence');
    });

    it('never lets a client publish on /presence, whatever the rules, nor in open mode', async () => {
      const t = await secured();
      const c = await open(t, 'alice');
      assert.equal((await c.publish('/chat/room1', 'hi')).successful, true, 'the rule allows publishing elsewhere');
      const reply = await c.publish('/presence/chat/room1', { action: 'join', clientId: 'x', user: 'mallory' });
      assert.equal(reply.successful, false);
      assert.equal(errorOf(reply).code, 403);
      assert.match(errorOf(reply).message, /published by the server only/);

      const openServer = await start({ open: true });
      const o = await open(openServer);
      assert.equal(errorOf(await o.publish('/presence/chat/room1', { action: 'leave' })).code, 403);
    });
  });

  describe('/service/presence', () => {
    it('answers the members of a channel, one per user, to a client that may subscribe to it', async () => {
      const t = await start({ open: false, channels: [{ channel: '/private/**', subscribe: 'nobody' }] });
      const tab1 = await open(t, 'alice');
      const tab2 = await open(t, 'alice');
      const bob = await open(t, 'bob');
      const guest = await open(t);
      for (const c of [tab1, tab2, bob, guest]) await c.subscribe('/chat/room1');
      const asker = await open(t, 'carol');
      const { reply, answer } = await asker.ask({ channel: '/chat/room1' });
      assert.equal(reply.successful, true, 'a client may ask by default');
      const data = answer!.data as { channel: string; members: Array<{ clientId: string; user: string | null }> };
      assert.equal(data.channel, '/chat/room1');
      assert.equal(data.members.length, 3);
      const alice = data.members.find((m) => m.user === 'alice')!;
      assert.ok([tab1.clientId, tab2.clientId].includes(alice.clientId));
      assert.deepEqual(data.members.find((m) => m.user === 'bob'), { clientId: bob.clientId, user: 'bob' });
      assert.deepEqual(data.members.find((m) => m.user === null), { clientId: guest.clientId, user: null });
      assert.deepEqual(
        (await t.server.presence('/chat/room1')).sort((a, b) => a.clientId.localeCompare(b.clientId)),
        [...data.members].sort((a, b) => a.clientId.localeCompare(b.clientId)),
        'server.presence() gives the same members',
      );
      const empty = await asker.ask({ channel: '/chat/empty' });
      assert.deepEqual(empty.answer!.data, { channel: '/chat/empty', members: [] });
    });

    it('refuses a channel the client may not subscribe to, and bad requests, with a Bayeux error', async () => {
      const t = await start({ open: false, channels: [{ channel: '/private/**', subscribe: 'nobody' }] });
      const c = await open(t, 'alice');
      const cases: Array<[unknown, number, RegExp]> = [
        [{ channel: '/private/room' }, 403, /subscribe denied/],
        [{}, 400, /channel/],
        ['/chat/room1', 400, /channel/],
        [{ channel: 42 }, 405, /./],
        [{ channel: 'chat' }, 405, /./],
        [{ channel: '/chat/*' }, 405, /wildcard/],
        [{ channel: '/meta/connect' }, 405, /no members/],
        [{ channel: '/service/presence' }, 405, /no members/],
        [{ channel: '/presence/chat/room1' }, 405, /no members/],
      ];
      for (const [data, code, message] of cases) {
        const { reply, answer } = await c.ask(data);
        assert.equal(reply.successful, false, JSON.stringify(data));
        assert.equal(answer, undefined);
        const error = errorOf(reply);
        assert.equal(error.code, code, `${JSON.stringify(data)}: ${reply.error}`);
        assert.match(error.message, message, JSON.stringify(data));
      }
    });

    it('server.presence() refuses what has no members', async () => {
      const t = await start();
      await assert.rejects(t.server.presence('/chat/*'), { code: 'ERR_INVALID_CHANNEL' });
      await assert.rejects(t.server.presence('/meta/connect'), { code: 'ERR_INVALID_CHANNEL' });
      await assert.rejects(t.server.presence('/presence/chat'), { code: 'ERR_INVALID_CHANNEL' });
      await assert.rejects(t.server.presence('nope'), { code: 'ERR_INVALID_CHANNEL' });
    });
  });
});

describe('presence across two nodes (Redis engine)', () => {
  let prefix = '';
  const nodes: TestServer[] = [];
  const pair = async (): Promise<[TestServer, TestServer]> => {
    prefix = uniquePrefix('presence');
    for (let i = 0; i < 2; i++) {
      nodes.push(await startServer({ engine: new RedisEngine({ url: REDIS_URL, prefix }), authenticate, presenceGrace: GRACE }));
    }
    return [nodes[0]!, nodes[1]!];
  };

  before(requireRedis);
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
    await Promise.all(nodes.splice(0).map((t) => t.close()));
    if (prefix) await deleteKeys(prefix);
  });
  it('shows a join on node A to a watcher on node B, and the leave after the grace', async () => {
    const [a, b] = await pair();
    const watcher = await open(b);
    await watcher.subscribe('/presence/chat/room1');
    const alice = await open(a, 'alice');
    await alice.subscribe('/chat/room1');
    await watcher.peer.next((m) => m.channel === '/presence/chat/room1', 'the join, across nodes');
    assert.deepEqual(watcher.events('/chat/room1')[0]!.data, { action: 'join', clientId: alice.clientId, user: 'alice' });
    await alice.disconnect();
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'the leave, across nodes');
    assert.deepEqual(watcher.events('/chat/room1')[1]!.data, { action: 'leave', clientId: alice.clientId, user: 'alice' });
  });

  it('publishes nothing when a reload lands the new session on the other node within the grace', async () => {
    const [a, b] = await pair();
    const watcherA = await open(a);
    const watcherB = await open(b);
    await watcherA.subscribe('/presence/chat/room1');
    await watcherB.subscribe('/presence/chat/room1');
    const before = await open(a, 'alice');
    await before.subscribe('/chat/room1');
    await waitFor(() => watcherA.events('/chat/room1').length === 1 && watcherB.events('/chat/room1').length === 1, 3000, 'the join on both nodes');
    await before.disconnect();
    const after = await open(b, 'alice');
    await after.subscribe('/chat/room1');
    await sleep(GRACE + 400);
    assert.deepEqual(actions(watcherA.events('/chat/room1')), ['join alice']);
    assert.deepEqual(actions(watcherB.events('/chat/room1')), ['join alice']);
    assert.deepEqual(await a.server.presence('/chat/room1'), [{ clientId: after.clientId, user: 'alice' }]);
  });

  it('publishes the leave a full grace after the last goodbye, when a member came back on the other node and left again', async () => {
    const [a, b] = await pair();
    const watcher = await open(b);
    await watcher.subscribe('/presence/chat/room1');
    const first = await open(a, 'alice');
    await first.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await first.disconnect(); // node a holds a leave for GRACE ms
    const second = await open(b, 'alice'); // back on node b: the mark is taken
    await second.subscribe('/chat/room1');
    await sleep(GRACE / 2);
    await second.disconnect(); // gone again: node b holds a leave of its own
    const lastGoodbye = Date.now();
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, 'the leave');
    // Node a's grace ended first; it must not have taken node b's newer mark and published early.
    assert.ok(Date.now() - lastGoodbye >= GRACE - 50, `the leave came ${Date.now() - lastGoodbye} ms after the last goodbye; the grace is ${GRACE} ms`);
    await sleep(GRACE);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice', 'leave alice']);
  });

  it('counts a user with sessions on both nodes once, and publishes one leave when its sessions end together', async () => {
    const [a, b] = await pair();
    const watcher = await open(b);
    await watcher.subscribe('/presence/chat/room1');
    const onA = await open(a, 'alice');
    const onB = await open(b, 'alice');
    await onA.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await onB.subscribe('/chat/room1');
    // Her session on A goes; she is still there on B.
    await onA.disconnect();
    await sleep(GRACE + 300);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice']);

    // Two tabs on one node that end at the same moment: one leave, once.
    const tab1 = await open(a, 'bob');
    const tab2 = await open(a, 'bob');
    await Promise.all([tab1.subscribe('/chat/room1'), tab2.subscribe('/chat/room1')]);
    await waitFor(() => watcher.events('/chat/room1').length === 2, 3000, "bob's join");
    await Promise.all([tab1.disconnect(), tab2.disconnect(), onB.disconnect()]);
    await waitFor(() => watcher.events('/chat/room1').length === 4, 3000, 'two leaves');
    await sleep(GRACE + 200);
    assert.deepEqual(actions(watcher.events('/chat/room1')).sort(), ['join alice', 'join bob', 'leave alice', 'leave bob']);
  });

  it('publishes nothing when a node shuts down and its user comes back on the other node within the grace', async () => {
    const [a, b] = await pair();
    const watcher = await open(b);
    await watcher.subscribe('/presence/chat/room1');
    const before = await open(a, 'alice');
    await before.subscribe('/chat/room1');
    await waitFor(() => watcher.events('/chat/room1').length === 1, 3000, 'the join');
    await a.close();
    const after = await open(b, 'alice');
    await after.subscribe('/chat/room1');
    await sleep(GRACE + 400);
    assert.deepEqual(actions(watcher.events('/chat/room1')), ['join alice']);
    assert.deepEqual(await b.server.presence('/chat/room1'), [{ clientId: after.clientId, user: 'alice' }]);
  });

  it('answers /service/presence on node B with a member connected to node A', async () => {
    const [a, b] = await pair();
    const alice = await open(a, 'alice');
    const guest = await open(a);
    await alice.subscribe('/chat/room1');
    await guest.subscribe('/chat/room1');
    const asker = await open(b, 'bob');
    const { answer } = await asker.ask({ channel: '/chat/room1' });
    const members = (answer!.data as { members: Array<{ clientId: string; user: string | null }> }).members;
    assert.deepEqual(
      members.sort((x, y) => x.clientId.localeCompare(y.clientId)),
      [
        { clientId: alice.clientId, user: 'alice' },
        { clientId: guest.clientId, user: null },
      ].sort((x, y) => x.clientId.localeCompare(y.clientId)),
    );
  });
});
