/**
 * Inboard: an application pushing from its own code to whom it means. deliverToUser,
 * deliverWhere and sessions() (on one node and across two nodes sharing Redis), exclude-sender
 * (`ext.echo: false` from raw, Faye and CometD clients; `publish(…, { exclude })`), and the
 * local client, which goes through the same rules and extensions as a remote one.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import faye from 'faye';
import { PerihelionError, RedisEngine, type Authenticator, type Extension, type ServerOptions, type Session } from '../src/index.js';
import { WsPeer, startServer, waitFor, type Msg, type TestServer } from './helpers.js';
import { REDIS_URL, deleteKeys, requireRedis, uniquePrefix } from './redis-fixture.js';

/** A handshake names its user in ext.user and its roles in ext.roles (an application's authenticator). */
const authenticate: Authenticator = ({ message }) => {
  const user = message.ext?.user;
  const roles = Array.isArray(message.ext?.roles) ? (message.ext.roles as string[]) : [];
  return typeof user === 'string' ? { id: user, roles, claims: { plan: 'pro' } } : null;
};

interface Peer {
  peer: WsPeer;
  clientId: string;
  data(channel: string): unknown[];
  subscribe(channel: string): Promise<Msg>;
  publish(channel: string, data: unknown, ext?: Record<string, unknown>): Promise<Msg>;
}

const servers: TestServer[] = [];
const peers: WsPeer[] = [];

async function server(options: ServerOptions = {}): Promise<TestServer> {
  const t = await startServer({ authenticate, ...options });
  servers.push(t);
  return t;
}

async function connect(t: TestServer, ext?: Record<string, unknown>): Promise<Peer> {
  const peer = await WsPeer.open(t.wsUrl);
  peers.push(peer);
  const reply = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ...(ext ? { ext } : {}) });
  assert.equal(reply.successful, true, `handshake: ${String(reply.error)}`);
  const clientId = reply.clientId as string;
  await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  return {
    peer,
    clientId,
    data: (channel) => peer.received.filter((m) => m.channel === channel && m.data !== undefined).map((m) => m.data),
    subscribe: (channel) => peer.request({ channel: '/meta/subscribe', clientId, subscription: channel }),
    publish: (channel, data, ext) => peer.request({ channel, clientId, data, ...(ext ? { ext } : {}) }),
  };
}

const API_KEY = 'inboard-api-key-0123456789';

/** POST /api/deliver with the API key; the status and the JSON answer. */
async function api(t: TestServer, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: unknown }> {
  const response = await fetch(`http://127.0.0.1:${t.address.port}/api/deliver`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: response.status, json: await response.json() };
}

/** Lets anything in flight arrive: a message that should not come has had its chance. */
const settle = (ms = 150): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

afterEach(async () => {
  await Promise.all(peers.splice(0).map((peer) => peer.close()));
  await Promise.all(servers.splice(0).map((t) => t.close()));
});

describe('deliverToUser, deliverWhere, sessions()', () => {
  it('reaches every session of one user and nobody else, and says how many', async () => {
    const t = await server();
    const tab1 = await connect(t, { user: '42' });
    const tab2 = await connect(t, { user: '42' });
    const other = await connect(t, { user: '7' });
    const anonymous = await connect(t);
    // Delivered without any subscription: the session is addressed, not a channel's subscribers.
    assert.equal(await t.server.deliverToUser('42', '/notifications', { text: 'for 42' }), 2);
    await waitFor(() => tab1.data('/notifications').length === 1 && tab2.data('/notifications').length === 1, 3000, 'both tabs of user 42');
    await settle();
    assert.deepEqual(other.data('/notifications'), []);
    assert.deepEqual(anonymous.data('/notifications'), []);
    assert.equal(await t.server.deliverToUser('nobody', '/notifications', 1), 0);
  });

  it('sessionsOf(user) lists the user’s live sessions on this node, and forgets each one that ends', async () => {
    const t = await server();
    const tab1 = await connect(t, { user: '42' });
    const tab2 = await connect(t, { user: '42' });
    await connect(t, { user: '7' });
    await connect(t);
    const ids = (user: string): string[] => t.server.sessionsOf(user).map((session) => session.id).sort();
    assert.deepEqual(ids('42'), [tab1.clientId, tab2.clientId].sort());
    assert.equal(t.server.sessionsOf('7').length, 1);
    assert.deepEqual(ids('nobody'), []);
    await tab1.peer.request({ channel: '/meta/disconnect', clientId: tab1.clientId });
    assert.deepEqual(ids('42'), [tab2.clientId]);
    assert.equal(await t.server.disconnectClient(tab2.clientId), true);
    await waitFor(() => ids('42').length === 0, 3000, 'the last session of 42 gone');
    // A new session of the user after all of them went is listed again.
    const tab3 = await connect(t, { user: '42' });
    assert.deepEqual(ids('42'), [tab3.clientId]);
  });

  it('refuses a bad user id or channel with a clear error', async () => {
    const t = await server();
    await assert.rejects(t.server.deliverToUser('', '/x', 1), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT');
    await assert.rejects(t.server.deliverToUser(42 as unknown as string, '/x', 1), /a user id is a non-empty string/);
    await assert.rejects(t.server.deliverToUser('42', '/x/*', 1), (error: PerihelionError) => error.code === 'ERR_INVALID_CHANNEL');
    await assert.rejects(t.server.deliverToUser('42', '/meta/connect', 1), /meta channel/);
    await assert.rejects(t.server.deliverWhere('yes' as unknown as () => boolean, '/x', 1), /needs a predicate function/);
    // session.deliver's meta channel, like deliverToUser's: a meta message forged by the application would reach the client's protocol.
    const one = await connect(t);
    await assert.rejects(t.server.deliver(one.clientId, '/meta/connect', { evil: 1 }), (error: PerihelionError) => error.code === 'ERR_INVALID_CHANNEL' && /meta channel/.test(error.message));
    await assert.rejects(t.server.deliver(one.clientId, '/x', undefined), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /without data/.test(error.message));
    await assert.rejects(t.server.deliverToUser('42', '/x', () => 1), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /a function as data/.test(error.message));
    await assert.rejects(t.server.deliverWhere(() => true, '/x', undefined), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT');
    await settle();
    assert.deepEqual(one.data('/meta/connect'), [], 'nothing reached the client');
    assert.equal(await t.server.deliver(one.clientId, '/x', null), true, 'null is data');
  });

  it('with an idempotency key, sends each session a retried delivery once, and reaches those the first try did not', async () => {
    const t = await server();
    const tab1 = await connect(t, { user: '42' });
    const tab2 = await connect(t, { user: '42' });
    const other = await connect(t, { user: '7' });
    assert.equal(await t.server.deliverToUser('42', '/notifications', 'order shipped', { idempotencyKey: 'ship-1' }), 2);
    // The caller timed out and tries again; meanwhile the user opened a third tab.
    const tab3 = await connect(t, { user: '42' });
    assert.equal(await t.server.deliverToUser('42', '/notifications', 'order shipped', { idempotencyKey: 'ship-1' }), 3, 'every session that has it counts');
    assert.equal(await t.server.deliverToUser('42', '/notifications', 'order shipped', { idempotencyKey: 'ship-1' }), 3);
    // The same key for another user is another user's delivery; a new key is a new delivery.
    assert.equal(await t.server.deliverToUser('7', '/notifications', 'order shipped', { idempotencyKey: 'ship-1' }), 1);
    assert.equal(await t.server.deliverToUser('42', '/notifications', 'order delivered', { idempotencyKey: 'ship-2' }), 3);
    await waitFor(() => [tab1, tab2, tab3].every((tab) => tab.data('/notifications').length === 2) && other.data('/notifications').length === 1, 3000, 'every delivery');
    await settle();
    for (const tab of [tab1, tab2, tab3]) assert.deepEqual(tab.data('/notifications'), ['order shipped', 'order delivered'], 'each once, in order');
    assert.deepEqual(other.data('/notifications'), ['order shipped']);

    // deliverWhere keys each session's copy the same way.
    assert.equal(await t.server.deliverWhere((s) => s.user === '42', '/digest', 'weekly', { idempotencyKey: 'digest-9' }), 3);
    assert.equal(await t.server.deliverWhere((s) => s.user !== null, '/digest', 'weekly', { idempotencyKey: 'digest-9' }), 4);
    await waitFor(() => other.data('/digest').length === 1 && tab3.data('/digest').length === 1, 3000, 'the digest');
    await settle();
    for (const peer of [tab1, tab2, tab3, other]) assert.deepEqual(peer.data('/digest'), ['weekly']);

    // A bad key is refused before anything is sent.
    for (const idempotencyKey of ['', 'with space', 'x'.repeat(256), 'é']) {
      await assert.rejects(t.server.deliverToUser('42', '/bad', 1, { idempotencyKey }), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT', JSON.stringify(idempotencyKey));
      await assert.rejects(t.server.deliverWhere(() => true, '/bad', 1, { idempotencyKey }), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT', JSON.stringify(idempotencyKey));
    }
    await settle();
    assert.deepEqual(tab1.data('/bad'), []);
  });

  it('POST /api/deliver reaches every session of a user, once per Idempotency-Key, and refuses what is not one session or one user', async () => {
    const t = await server({ apiKey: API_KEY });
    const tab1 = await connect(t, { user: 'ann' });
    const tab2 = await connect(t, { user: 'ann' });
    const bob = await connect(t, { user: 'bob' });
    const keyed = { 'Idempotency-Key': 'invoice-77' };
    assert.deepEqual(await api(t, { user: 'ann', channel: '/invoices', data: 'paid' }, keyed), { status: 200, json: { delivered: 2 } });
    assert.deepEqual(await api(t, { user: 'ann', channel: '/invoices', data: 'paid' }, keyed), { status: 200, json: { delivered: 2 } }, 'the retry');
    assert.deepEqual(await api(t, { user: 'nobody', channel: '/invoices', data: 'paid' }), { status: 200, json: { delivered: 0 } });
    assert.deepEqual(await api(t, { clientId: bob.clientId, channel: '/invoices', data: 'yours' }), { status: 200, json: { delivered: true } });
    await waitFor(() => tab1.data('/invoices').length === 1 && tab2.data('/invoices').length === 1 && bob.data('/invoices').length === 1, 3000, 'the invoices');
    await settle();
    assert.deepEqual([tab1.data('/invoices'), tab2.data('/invoices'), bob.data('/invoices')], [['paid'], ['paid'], ['yours']]);

    const bad: [unknown, RegExp][] = [
      [{ channel: '/invoices', data: 1 }, /one of the two/],
      [{ clientId: bob.clientId, user: 'ann', channel: '/invoices', data: 1 }, /one of the two/],
      [{ user: '', channel: '/invoices', data: 1 }, /"user" is a non-empty string/],
      [{ user: 42, channel: '/invoices', data: 1 }, /"user" is a non-empty string/],
      [{ clientId: 42, channel: '/invoices', data: 1 }, /"clientId" is a string/],
      [{ user: 'ann', channel: '/invoices/*', data: 1 }, /channel/],
      [{ user: 'ann', channel: '/meta/connect', data: 1 }, /meta channel/],
      [{ user: 'ann', channel: '/invoices' }, /"data" is required/],
    ];
    for (const [body, message] of bad) {
      const answer = await api(t, body);
      assert.equal(answer.status, 400, JSON.stringify(body));
      assert.match((answer.json as { error: { message: string } }).error.message, message, JSON.stringify(body));
    }
    const badKey = await api(t, { user: 'ann', channel: '/invoices', data: 1 }, { 'Idempotency-Key': 'two words' });
    assert.equal(badKey.status, 400);
    await settle();
    assert.equal(tab1.data('/invoices').length, 1, 'nothing refused was sent');
  });

  it('reaches the sessions a predicate over identity and session.data chooses', async () => {
    const t = await server();
    // The application tags sessions as they arrive (here from the handshake's ext.room).
    t.server.on('handshake', (session) => session.data.set('room', session.identity?.id === 'ann' ? 'lobby' : 'kitchen'));
    const ann = await connect(t, { user: 'ann', roles: ['admin'] });
    const bob = await connect(t, { user: 'bob' });
    const cat = await connect(t, { user: 'cat', roles: ['admin'] });
    assert.equal(await t.server.deliverWhere((s) => s.roles.includes('admin'), '/ops', 'admins'), 2);
    assert.equal(await t.server.deliverWhere((s) => s.data.room === 'kitchen', '/room', 'kitchen'), 2);
    assert.equal(await t.server.deliverWhere(() => false, '/room', 'nobody'), 0);
    await waitFor(() => cat.data('/room').length === 1 && bob.data('/room').length === 1, 3000, 'the kitchen');
    await waitFor(() => ann.data('/ops').length === 1 && cat.data('/ops').length === 1, 3000, 'the admins');
    await settle();
    assert.deepEqual([ann.data('/room'), bob.data('/ops')], [[], []]);
  });

  it('describes every session as JSON: user, roles, claims, data (what JSON cannot hold left out), subscriptions', async () => {
    const t = await server();
    t.server.on('handshake', (session) => {
      if (session.identity === null) return;
      session.data.set('room', 'lobby');
      session.data.set('callback', () => 1);
      session.data.set('big', 10n);
    });
    const ann = await connect(t, { user: 'ann', roles: ['admin'] });
    await ann.subscribe('/chat/*');
    const anonymous = await connect(t);
    const sessions = await t.server.sessions();
    const byId = new Map(sessions.map((s) => [s.clientId, s]));
    assert.deepEqual(byId.get(ann.clientId), {
      clientId: ann.clientId,
      user: 'ann',
      roles: ['admin'],
      claims: { plan: 'pro' },
      data: { room: 'lobby' },
      connectionType: 'websocket',
      subscriptions: ['/chat/*'],
    });
    assert.equal(byId.get(anonymous.clientId)?.user, null);
    assert.deepEqual(byId.get(anonymous.clientId)?.data, {});
    // Describing a session that never used `data` does not make it one (a Map per session).
    assert.equal((t.server.getSession(anonymous.clientId) as unknown as { dataIfAny: unknown }).dataIfAny, null);
    assert.equal(sessions.length, 2);
  });
});

describe('exclude the sender', () => {
  it('does not echo a publish with ext.echo false to its publisher; others get it without the flag', async () => {
    const t = await server();
    const publisher = await connect(t);
    const reader = await connect(t);
    await publisher.subscribe('/chat/room');
    await reader.subscribe('/chat/room');
    assert.equal((await publisher.publish('/chat/room', 'quiet', { echo: false, tag: 'kept' })).successful, true);
    assert.equal((await publisher.publish('/chat/room', 'loud')).successful, true);
    await waitFor(() => reader.data('/chat/room').length === 2 && publisher.data('/chat/room').length === 1, 3000, 'both publishes');
    await settle();
    assert.deepEqual(publisher.data('/chat/room'), ['loud'], 'the publisher got only the publish that did not ask for no echo');
    const quiet = reader.peer.received.find((m) => m.data === 'quiet')!;
    const { position: _position, ...ext } = quiet.ext as Record<string, unknown>;
    assert.deepEqual(ext, { tag: 'kept' }, 'echo is an instruction to the server, not passed on');
    // A skip note is the server's to give: a forged one would have Perihelion clients drop the message.
    assert.equal((await publisher.publish('/chat/room', 'forged', { skip: true })).successful, true);
    await t.server.publish('/chat/room', 'forged too', { ext: { skip: true } });
    await waitFor(() => reader.data('/chat/room').length === 4, 3000, 'the forged ones');
    for (const data of ['forged', 'forged too']) {
      assert.equal((reader.peer.received.find((m) => m.data === data)!.ext as { skip?: unknown }).skip, undefined, `${data}: no skip`);
    }
  });

  it('excludes a session from a server publish, and only that one', async () => {
    const t = await server();
    const a = await connect(t);
    const b = await connect(t);
    await a.subscribe('/news');
    await b.subscribe('/news');
    await t.server.publish('/news', 'not for a', { exclude: a.clientId });
    await waitFor(() => b.data('/news').length === 1, 3000, 'b to get it');
    await settle();
    assert.deepEqual(a.data('/news'), []);
    await assert.rejects(t.server.publish('/news', 1, { exclude: '' }), /exclude must be a clientId/);
  });

  it('tells a session that asked (handshake ext.skips) of each position it is excluded from, without the data; others nothing', async () => {
    const t = await server();
    const tracking = await connect(t, { skips: true });
    const plain = await connect(t);
    await tracking.subscribe('/quiet');
    await plain.subscribe('/quiet');
    assert.equal((await tracking.publish('/quiet', 'mine', { echo: false })).successful, true);
    await t.server.publish('/quiet', 'not for plain', { exclude: plain.clientId });
    await t.server.publish('/quiet', 'not for tracking', { exclude: tracking.clientId });
    await t.server.publish('/quiet', 'for all');
    // Deliveries (and notes) carry a position; the reply to the publish does not.
    const delivered = (peer: Peer): Msg[] => peer.peer.received.filter((m) => m.channel === '/quiet' && m.successful === undefined);
    await waitFor(() => delivered(tracking).length === 4 && delivered(plain).length === 3, 3000, 'every note and message');
    await settle();
    const seen = delivered(tracking).map((m) => [(m.ext as { position: { offset: number } }).position.offset, m.data ?? (m.ext as { skip?: boolean }).skip]);
    assert.deepEqual(seen, [[1, true], [2, 'not for plain'], [3, true], [4, 'for all']], 'a note in place of each message it is excluded from: offsets without a hole');
    assert.deepEqual(Object.keys(delivered(tracking)[0]!).sort(), ['channel', 'ext'], 'no data, no id');
    // A client that did not ask (CometD, Faye) is sent nothing in its place: a message without data would reach its listeners.
    assert.deepEqual(plain.data('/quiet'), ['mine', 'not for tracking', 'for all']);
    assert.equal(delivered(plain).length, 3);
  });

  it('works for the Faye client, which sets ext through an extension', async () => {
    const t = await server();
    const reader = await connect(t);
    await reader.subscribe('/chat/faye');
    const client = new faye.Client(t.url, { retry: 1 });
    client.addExtension({
      outgoing(message, next) {
        if (message.channel === '/chat/faye') message.ext = { ...message.ext, echo: false };
        next(message);
      },
    });
    const own: unknown[] = [];
    try {
      await client.subscribe('/chat/faye', (data) => own.push(data));
      await client.publish('/chat/faye', { from: 'faye' });
      await waitFor(() => reader.data('/chat/faye').length === 1, 3000, 'the reader to get the Faye publish');
      await settle(300);
      assert.deepEqual(own, [], 'the Faye client did not get its own message back');
    } finally {
      client.disconnect();
    }
  });
});

describe('server.publish and session.deliver', () => {
  it('answers every mistake of a publish with a rejection, never a throw, and keeps serving', async () => {
    const t = await server();
    const reader = await connect(t);
    await reader.subscribe('/news');
    const published: unknown[] = [];
    t.server.on('publish', (message) => published.push(message.data));
    let wildcard: Promise<boolean> | undefined;
    let unserialisable: Promise<boolean> | undefined;
    assert.doesNotThrow(() => (wildcard = t.server.publish('/news/*', 1)));
    assert.doesNotThrow(() => (unserialisable = t.server.publish('/news', { big: 10n })));
    await assert.rejects(wildcard!, { code: 'ERR_INVALID_CHANNEL' });
    await assert.rejects(unserialisable!, (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /cannot serialise the message on \/news: .*BigInt/.test(error.message));
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    await assert.rejects(t.server.publish('/news', cycle), { code: 'ERR_INVALID_ARGUMENT' });
    // What would vanish from the JSON and reach subscribers as a message without data.
    await assert.rejects(t.server.publish('/news', undefined), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /without data/.test(error.message));
    await assert.rejects(t.server.publish('/news', () => 1), { code: 'ERR_INVALID_ARGUMENT' });
    await assert.rejects(t.server.publish('/news', Symbol('s')), { code: 'ERR_INVALID_ARGUMENT' });
    assert.throws(() => t.server.subscribe('/meta/connect', () => {}), (error: PerihelionError) => error.code === 'ERR_INVALID_CHANNEL' && /meta channel/.test(error.message));
    assert.throws(() => t.server.subscribe('/meta/**', () => {}), { code: 'ERR_INVALID_CHANNEL' });
    await t.server.publish('/news', 'after');
    assert.deepEqual(published, ['after'], "the 'publish' event, once the publish is made, for that one only");
    await waitFor(() => reader.data('/news').length === 1, 3000, 'the reader to get it');
    assert.deepEqual(reader.data('/news'), ['after']);
  });

  it('reaches a WebSocket subscriber intact on both sides of every frame-length boundary, multi-byte characters included', async () => {
    const t = await server();
    const reader = await connect(t);
    await reader.subscribe('/sizes');
    // The frame's length field is 7 bits up to 125 bytes, 16 bits up to 65 535, 64 bits beyond:
    // sweeps of one-byte and two-byte characters cross both boundaries, a byte at a time.
    const sent: string[] = [];
    for (let n = 20; n < 90; n++) sent.push('a'.repeat(n));
    for (let n = 32_700; n < 32_780; n++) sent.push('é'.repeat(n));
    for (let n = 65_440; n < 65_520; n++) sent.push('a'.repeat(n));
    // Each in a frame of its own (the flush of one event-loop turn runs before the next publish)…
    for (const data of sent) {
      await t.server.publish('/sizes', data);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await waitFor(() => reader.data('/sizes').length === sent.length, 10_000, 'every message, one per frame');
    // …then all of them published in one turn, written as one frame.
    for (const data of sent) void t.server.publish('/sizes', data);
    await waitFor(() => reader.data('/sizes').length === 2 * sent.length, 10_000, 'every message, in one frame');
    assert.deepEqual(reader.data('/sizes'), [...sent, ...sent]);
  });

  it('goes through an asynchronous outgoing extension, and rejects when it fails', async () => {
    const extension: Extension = {
      outgoing: async (message) => {
        await settle(5);
        if (message.data === 'fail') throw new Error('the extension failed');
        return message.channel === '/news' ? { ...message, data: { wrapped: message.data } } : message;
      },
    };
    const t = await server({ extensions: [extension] });
    const reader = await connect(t);
    await reader.subscribe('/news');
    await assert.rejects(t.server.publish('/news', 'fail'), /the extension failed/);
    await t.server.publish('/news', 'x');
    await waitFor(() => reader.data('/news').length === 1, 3000, 'the reader to get it');
    assert.deepEqual(reader.data('/news'), [{ wrapped: 'x' }]);
  });

  it('throws at the caller of session.deliver for data JSON cannot hold, a bad or meta channel; the session goes on', async () => {
    const t = await server();
    let session: Session | undefined;
    t.server.on('handshake', (s) => (session = s));
    const reader = await connect(t);
    assert.throws(() => session!.deliver('/direct', { big: 10n }), (error: PerihelionError) => error.code === 'ERR_INVALID_ARGUMENT' && /BigInt/.test(error.message));
    assert.throws(() => session!.deliver('/direct', undefined), { code: 'ERR_INVALID_ARGUMENT' });
    assert.throws(() => session!.deliver('/meta/connect', { advice: { reconnect: 'none' } }), { code: 'ERR_INVALID_CHANNEL' });
    assert.throws(() => session!.deliver('/direct/*', 1), { code: 'ERR_INVALID_CHANNEL' });
    assert.throws(() => session!.deliver('direct', 1), { code: 'ERR_INVALID_CHANNEL' });
    session!.deliver('/direct', 'fine');
    await waitFor(() => reader.data('/direct').length === 1, 3000, 'the session to get the next one');
    assert.deepEqual(reader.data('/direct'), ['fine']);
  });
});

describe('service requests', () => {
  it('answers a request whose listener threw with a 500 error, reported through the error event', async () => {
    const t = await server();
    const errors: unknown[] = [];
    t.server.on('error', (error) => errors.push(error));
    t.server.subscribe('/service/broken', () => {
      throw new Error('the service broke');
    });
    const caller = await connect(t);
    const reply = await caller.publish('/service/broken', { please: true });
    assert.equal(reply.successful, false);
    assert.match(String(reply.error), /^500:\/service\/broken:.*the service failed/);
    assert.match(String(errors[0]), /the service broke/);
    // Another listener's answer still wins: the failure of one is only reported.
    t.server.subscribe('/service/broken', () => 'still answered');
    const replies = await caller.peer.request({ channel: '/service/broken', clientId: caller.clientId, data: 1 });
    assert.equal(replies.successful, true);
  });
});

describe('local client', () => {
  it('subscribes and publishes in-process through the channel rules, seen by remote clients', async () => {
    const t = await server({ open: false, channels: [{ channel: '/chat/**', publish: 'anyone' }] });
    const remote = await connect(t);
    await remote.subscribe('/chat/room');
    const local = t.server.localClient();
    const got: unknown[] = [];
    const stop = await local.subscribe('/chat/*', (data) => got.push(data));
    assert.match(local.clientId ?? '', /^[0-9a-z]+$/, 'a session like any other');
    await local.publish('/chat/room', 'from the server process');
    await waitFor(() => remote.data('/chat/room').length === 1, 3000, 'the remote client to get the local publish');
    await t.server.publish('/chat/room', 'server publish');
    await waitFor(() => got.length === 2, 3000, 'the local client to get both publishes');
    assert.deepEqual(got, ['from the server process', 'server publish']);
    // The default policy: clients publish only where a rule allows; a local client is no exception.
    await assert.rejects(local.publish('/news', 'x'), (error: PerihelionError & { bayeux?: string }) => {
      assert.equal(error.code, 'ERR_REFUSED');
      assert.match(error.bayeux ?? '', /^403:\/news:/);
      return true;
    });
    await stop();
    assert.deepEqual([...t.server.getSession(local.clientId!)!.subscriptions], [], 'the last handler removed unsubscribes');
    await local.disconnect();
    assert.equal(t.server.getSession(local.clientId!), undefined, 'disconnect ends the session');
    await assert.rejects(local.publish('/chat/room', 'late'), (error: PerihelionError) => error.code === 'ERR_SERVER_CLOSED');
  });

  it('passes the extensions and the authenticator; sends /service requests and gets the answer', async () => {
    const seen: string[] = [];
    const recorder: Extension = {
      incoming(message, context) {
        seen.push(`${context.transport?.transport}:${message.channel}`);
        return message;
      },
    };
    const t = await server({ extensions: [recorder], anonymous: false });
    t.server.subscribe('/service/whoami', (_message, session) => ({ user: session?.identity?.id ?? null }));
    await assert.rejects(t.server.localClient().connect(), (error: PerihelionError) => error.code === 'ERR_REFUSED' && /403/.test(error.message));
    const local = t.server.localClient({ ext: { user: 'robot' } });
    assert.deepEqual(await local.request('/service/whoami', {}), { user: 'robot' });
    assert.ok(seen.includes('in-process:/meta/handshake') && seen.includes('in-process:/service/whoami'), seen.join(', '));
    await local.disconnect();
  });

  it('is ended like any session when the server ends it, and a handler that throws is reported', async () => {
    const t = await startServer();
    servers.push(t);
    const errors: unknown[] = [];
    t.server.on('error', (error) => errors.push(error));
    const local = t.server.localClient();
    await local.subscribe('/boom', () => {
      throw new Error('handler failed');
    });
    await t.server.publish('/boom', 1);
    await waitFor(() => errors.length === 1, 3000, 'the failure to be reported');
    assert.match(String(errors[0]), /handler failed/);
    assert.equal(await t.server.disconnectClient(local.clientId!), true);
    await assert.rejects(local.subscribe('/other', () => {}), (error: PerihelionError) => error.code === 'ERR_SERVER_CLOSED');
  });
});

describe('after close()', () => {
  it('every call says the server is closed (ERR_SERVER_CLOSED), listen() included: a listener opened then would never close', async () => {
    const t = await startServer();
    await t.close();
    const closed = (error: unknown): boolean => error instanceof PerihelionError && error.code === 'ERR_SERVER_CLOSED';
    await assert.rejects(t.server.listen({ port: 0, host: '127.0.0.1' }), closed, 'listen');
    await assert.rejects(t.server.sessions(), closed, 'sessions');
    await assert.rejects(t.server.disconnectClient('x'), closed, 'disconnectClient');
    await assert.rejects(t.server.disconnectUser('u'), closed, 'disconnectUser');
    await assert.rejects(t.server.history('/x'), closed, 'history');
    await assert.rejects(t.server.presence('/x'), closed, 'presence');
    await assert.rejects(t.server.publish('/x', 1), closed, 'publish');
    await assert.rejects(t.server.state('/x', {}), closed, 'state');
    assert.throws(() => t.server.subscribe('/x', () => {}), closed, 'subscribe');
    assert.throws(() => t.server.addExtension({}), closed, 'addExtension');
    assert.throws(() => t.server.localClient(), closed, 'localClient');
    assert.equal(t.server.address(), null, 'nothing listens');
  });
});

describe('inboard across two nodes sharing Redis', () => {
  let prefix = '';
  before(requireRedis);
  after(async () => {
    if (prefix) await deleteKeys(prefix);
  });
  const node = (): Promise<TestServer> => server({ engine: new RedisEngine({ url: REDIS_URL, prefix }) });

  it('deliverToUser and deliverWhere reach sessions on the other node; sessions() lists both nodes', async () => {
    prefix = uniquePrefix('inboard');
    const a = await node();
    const b = await node();
    b.server.on('handshake', (session) => session.data.set('team', 'blue'));
    const onA = await connect(a, { user: '42' });
    const onB = await connect(b, { user: '42' });
    const otherOnB = await connect(b, { user: '7' });
    assert.equal(await a.server.deliverToUser('42', '/notifications', 'hello 42'), 2);
    await waitFor(() => onA.data('/notifications').length === 1 && onB.data('/notifications').length === 1, 3000, 'both sessions of 42');
    const listed = await a.server.sessions();
    assert.deepEqual(listed.map((s) => s.clientId).sort(), [onA.clientId, onB.clientId, otherOnB.clientId].sort());
    assert.equal(await a.server.deliverWhere((s) => s.data.team === 'blue' && s.user === '7', '/team', 'blue 7'), 1);
    await waitFor(() => otherOnB.data('/team').length === 1, 3000, 'the session chosen on node b');
    await settle();
    assert.deepEqual(onB.data('/team'), []);
  });

  it('deliverToUser with an idempotency key, tried again on the other node, sends each session nothing twice', async () => {
    prefix = uniquePrefix('inboard');
    const a = await node();
    const b = await node();
    const onA = await connect(a, { user: '42' });
    const onB = await connect(b, { user: '42' });
    assert.equal(await a.server.deliverToUser('42', '/notifications', 'once', { idempotencyKey: 'n-1' }), 2);
    const laterOnB = await connect(b, { user: '42' });
    assert.equal(await b.server.deliverToUser('42', '/notifications', 'once', { idempotencyKey: 'n-1' }), 3);
    await waitFor(() => [onA, onB, laterOnB].every((peer) => peer.data('/notifications').length === 1), 3000, 'one copy each');
    await settle();
    for (const peer of [onA, onB, laterOnB]) assert.deepEqual(peer.data('/notifications'), ['once']);
  });

  it('excludes the publisher on its node, and a session of another node from a server publish', async () => {
    prefix = uniquePrefix('inboard');
    const a = await node();
    const b = await node();
    const publisher = await connect(a);
    const onB = await connect(b);
    await publisher.subscribe('/room');
    await onB.subscribe('/room');
    await publisher.publish('/room', 'no echo', { echo: false });
    await a.server.publish('/room', 'not for b', { exclude: onB.clientId });
    await waitFor(() => onB.data('/room').length === 1 && publisher.data('/room').length === 1, 3000, 'one message each');
    await settle();
    assert.deepEqual(onB.data('/room'), ['no echo']);
    assert.deepEqual(publisher.data('/room'), ['not for b']);
  });
});
