/**
 * Cluster mode end to end: several Perihelion servers on their own ports sharing one Redis, with
 * real clients on each (raw Bayeux over WebSocket) and a node in a child process that is killed.
 * The same cases run again on a local Redis Cluster of three shards.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer as createTcpServer, connect, type Server as TcpServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Position } from '@perihelion/protocol';
import { PerihelionError, RedisEngine, createServer, type Authenticator, type RedisEngineOptions, type ServerOptions } from '../src/index.js';
import { WsPeer, startServer, waitFor, type Msg, type TestServer } from './helpers.js';
import { Redis } from 'ioredis';
import { REDIS_URL, deleteKeys, keysUnder, requireRedis, startRedisCluster, uniquePrefix, type LocalRedisCluster } from './redis-fixture.js';

const API_KEY = 'cluster-test-key-0123456789';
const positionOf = (message: Msg): Position => (message.ext as { position: Position }).position;

interface Client {
  peer: WsPeer;
  clientId: string;
  data(channel: string): Msg[];
  subscribe(subscription: string | string[], ext?: Record<string, unknown>): Promise<Msg>;
}

async function client(node: TestServer, handshakeExt?: Record<string, unknown>): Promise<Client> {
  const peer = await WsPeer.open(node.wsUrl);
  const reply = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ...(handshakeExt ? { ext: handshakeExt } : {}) });
  const clientId = reply.clientId as string;
  await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  return {
    peer,
    clientId,
    data: (channel) => peer.received.filter((m) => m.channel === channel && m.data !== undefined),
    subscribe: (subscription, ext) => peer.request({ channel: '/meta/subscribe', clientId, subscription, ...(ext ? { ext } : {}) }),
  };
}

async function api(node: TestServer, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${node.address.port}${path}`, {
    method,
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

/** Where a suite's nodes keep their shared state: one Redis, or a Redis Cluster. */
interface Store {
  name: string;
  before(): Promise<void>;
  after(): Promise<void>;
  /** The engine options that reach it. */
  options(): RedisEngineOptions;
  /** Arguments of fixtures/cluster-node after the prefix. */
  nodeArgs(): string[];
  /** Keys under a prefix, with any hash tag taken out (so both stores name them alike). */
  keys(prefix: string): Promise<string[]>;
  clear(prefix: string): Promise<void>;
}

const oneRedis: Store = {
  name: 'one Redis',
  before: requireRedis,
  after: async () => {},
  options: () => ({ url: REDIS_URL }),
  nodeArgs: () => [REDIS_URL],
  keys: keysUnder,
  clear: deleteKeys,
};

function redisCluster(): Store {
  let cluster: LocalRedisCluster | null = null;
  const started = (): LocalRedisCluster => {
    if (!cluster) throw new Error('the local Redis Cluster did not start');
    return cluster;
  };
  const eachShard = async <T>(fn: (shard: Redis) => Promise<T>): Promise<T[]> =>
    Promise.all(
      started().ports.map(async (port) => {
        const shard = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
        try {
          return await fn(shard);
        } finally {
          shard.disconnect();
        }
      }),
    );
  return {
    name: 'a Redis Cluster of three shards',
    before: async () => void (cluster = await startRedisCluster()),
    after: async () => cluster?.stop(),
    options: () => ({ url: started().url, cluster: true }),
    nodeArgs: () => [started().url, 'cluster'],
    keys: async (prefix) => (await eachShard((shard) => shard.keys(`${prefix}*`))).flat().map((key) => prefix + key.slice(prefix.length).replace(/^\{[^}]*\}/, '')),
    clear: async (prefix) => void (await eachShard(async (shard) => {
      const keys = await shard.keys(`${prefix}*`);
      // One DEL per key: a shard refuses a DEL over several slots.
      for (const key of keys) await shard.del(key);
    })),
  };
}

clusterSuite(oneRedis);
clusterSuite(redisCluster());

function clusterSuite(store: Store): void {
describe(`cluster mode (Redis engine) on ${store.name}`, () => {
  let prefix: string;
  const nodes: TestServer[] = [];
  const peers: WsPeer[] = [];
  // A handshake may name its user in ext.user (an application's authenticator, as in security.md).
  const authenticate: Authenticator = ({ message }) => {
    const user = message.ext?.user;
    return typeof user === 'string' ? { id: user, roles: [], claims: {} } : null;
  };
  const node = async (options: RedisEngineOptions = {}, server: ServerOptions = {}): Promise<TestServer> => {
    const t = await startServer({ engine: new RedisEngine({ ...store.options(), prefix, ...options }), apiKey: API_KEY, authenticate, ...server });
    nodes.push(t);
    return t;
  };
  /** A node in a child process on the same store (fixtures/cluster-node), to kill or pause; `like` gives the rest of its TestServer. */
  const childNode = async (like: TestServer): Promise<{ child: ReturnType<typeof spawn>; server: TestServer }> => {
    const script = fileURLToPath(new URL('./fixtures/cluster-node.js', import.meta.url));
    const [url, ...mode] = store.nodeArgs();
    const child = spawn(process.execPath, [script, url!, prefix, ...mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const { port } = JSON.parse(String(line)) as { port: number };
    return { child, server: { ...like, wsUrl: `ws://127.0.0.1:${port}/bayeux`, url: `http://127.0.0.1:${port}/bayeux` } };
  };
  const open = async (t: TestServer, handshakeExt?: Record<string, unknown>): Promise<Client> => {
    const c = await client(t, handshakeExt);
    peers.push(c.peer);
    return c;
  };

  before(() => store.before());
  after(() => store.after());
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
    await Promise.all(nodes.splice(0).map((t) => t.close()));
    await store.clear(prefix);
  });
  // Each test gets its own prefix: its cluster meets no other.
  const fresh = (): void => {
    prefix = uniquePrefix('cluster');
  };

  it('delivers a message published on node B to a client on node A, with the position clients on B see', async () => {
    fresh();
    const a = await node();
    const b = await node();
    const onA = await open(a);
    const onB = await open(b);
    await onA.subscribe('/room');
    await onB.subscribe('/room');
    const publisher = await open(b);
    const ack = await publisher.peer.request({ channel: '/room', clientId: publisher.clientId, data: { text: 'hi from b' } });
    assert.equal(ack.successful, true);
    await a.server.publish('/room', { text: 'hi from a' });
    await waitFor(() => onA.data('/room').length === 2 && onB.data('/room').length === 2, 3000, 'both messages on both nodes');
    assert.deepEqual(onA.data('/room').map((m) => m.data), [{ text: 'hi from b' }, { text: 'hi from a' }]);
    assert.deepEqual(onA.data('/room').map(positionOf), onB.data('/room').map(positionOf), 'one order, one set of positions');
    assert.deepEqual(onA.data('/room').map((m) => positionOf(m).offset), [1, 2]);
  });

  it('lets a client that moves from node A to node B recover from its last position, then go on live', async () => {
    fresh();
    const a = await node();
    const b = await node();
    const first = await open(a);
    await first.subscribe('/moving');
    for (let i = 1; i <= 3; i++) await b.server.publish('/moving', i);
    await waitFor(() => first.data('/moving').length === 3, 3000, 'three messages on A');
    const last = positionOf(first.data('/moving').at(-1)!);
    await first.peer.request({ channel: '/meta/disconnect', clientId: first.clientId });
    for (let i = 4; i <= 6; i++) await a.server.publish('/moving', i);
    const moved = await open(b);
    const reply = await moved.subscribe('/moving', { recover: { '/moving': last } });
    assert.deepEqual((reply.ext as { recovered: unknown }).recovered, { '/moving': true });
    await a.server.publish('/moving', 7);
    await waitFor(() => moved.data('/moving').length === 4, 3000, 'the replay and the live message on B');
    assert.deepEqual(moved.data('/moving').map((m) => m.data), [4, 5, 6, 7]);
    assert.deepEqual(moved.data('/moving').map((m) => positionOf(m).offset), [4, 5, 6, 7]);
  });

  it("recognises a client's publish resent on another node, on its new session there (same instance), and publishes it once", async () => {
    fresh();
    const a = await node();
    const b = await node();
    const listener = await open(b);
    await listener.subscribe('/resend');
    const publish = async (from: Client, data: string, id: string): Promise<boolean> => (await from.peer.request({ channel: '/resend', clientId: from.clientId, data, id })).successful as boolean;
    // Its node died before the reply left: the client handshakes on another and resends.
    assert.equal(await publish(await open(a, { instance: 'resending-client' }), 'once', '7'), true);
    assert.equal(await publish(await open(b, { instance: 'resending-client' }), 'once', '7'), true, 'the resend is acknowledged');
    assert.equal(await publish(await open(b, { instance: 'another-client' }), 'another client', '7'), true);
    assert.equal(await publish(await open(a), 'no instance', '7'), true);
    await waitFor(() => listener.data('/resend').length >= 3, 3000, () => `3 messages (have ${listener.data('/resend').length})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(listener.data('/resend').map((m) => m.data), ['once', 'another client', 'no instance']);
    assert.equal(b.server.stats().duplicatePublishes, 1);
  });

  it("recognises a client's publish made again with its idempotency key on another node, by a client started again", async () => {
    fresh();
    const a = await node();
    const b = await node();
    const listener = await open(b);
    await listener.subscribe('/client-keyed');
    const publish = async (from: Client, data: string): Promise<Record<string, unknown>> => await from.peer.request({ channel: '/client-keyed', clientId: from.clientId, data, id: '1', ext: { idempotencyKey: 'job-9/done' } });
    assert.equal((await publish(await open(a), 'once')).successful, true);
    // Its process was restarted (no instance in common), and its new line reached the other node.
    const again = await publish(await open(b), 'again');
    assert.equal(again.successful, true);
    assert.deepEqual(again.ext, { repeated: true });
    await waitFor(() => listener.data('/client-keyed').length >= 1, 3000, 'the message');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(listener.data('/client-keyed').map((m) => m.data), ['once']);
  });

  it('recognises a backend\'s publish (with or without history) and delivery retried on another node with its Idempotency-Key, and makes each once', async () => {
    fresh();
    const noHistory = { history: [{ channel: '/keyed/nohist', size: 0 }] };
    const a = await node({}, noHistory);
    const b = await node({}, noHistory);
    const listener = await open(b);
    await listener.subscribe('/keyed/*');
    for (const channel of ['/keyed/hist', '/keyed/nohist']) {
      const keyed = async (on: TestServer, data: string, key: string): Promise<Record<string, unknown>> => (await api(on, 'POST', '/api/publish', { channel, data }, { 'Idempotency-Key': key })).json;
      // The call timed out at the backend (its answer lost): it tries again, through another node.
      assert.deepEqual(await keyed(a, 'once', `${channel}-1`), { published: 1, repeated: 0 });
      assert.deepEqual(await keyed(b, 'retried', `${channel}-1`), { published: 0, repeated: 1 });
      assert.equal(await a.server.publish(channel, 'in process', { idempotencyKey: `${channel}-1` }), false);
      assert.deepEqual(await keyed(b, 'another', `${channel}-2`), { published: 1, repeated: 0 });
    }
    await waitFor(() => listener.data('/keyed/nohist').length >= 2, 3000, () => `the messages (have ${JSON.stringify(listener.peer.received.map((m) => m.data))})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(listener.data('/keyed/hist').map((m) => m.data), ['once', 'another']);
    assert.deepEqual(listener.data('/keyed/nohist').map((m) => m.data), ['once', 'another']);
    // A delivery to the listener's session (held by b) made on a, then retried on b and on a.
    const deliver = async (on: TestServer, key: string): Promise<Record<string, unknown>> => (await api(on, 'POST', '/api/deliver', { clientId: listener.clientId, channel: '/keyed/private', data: key }, { 'Idempotency-Key': key })).json;
    assert.deepEqual(await deliver(a, 'd-1'), { delivered: true });
    assert.deepEqual(await deliver(b, 'd-1'), { delivered: true });
    assert.deepEqual(await deliver(a, 'd-1'), { delivered: true });
    assert.deepEqual(await deliver(a, 'd-2'), { delivered: true });
    await waitFor(() => listener.data('/keyed/private').length >= 2, 3000, 'the deliveries');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(listener.data('/keyed/private').map((m) => m.data), ['d-1', 'd-2']);
  });

  it('counts the sessions of both nodes in presence, channel lists, stats and metrics', async () => {
    fresh();
    // Without presence events, whose /presence channels would have history too.
    const a = await node({}, { presence: false });
    const b = await node({}, { presence: false });
    const onA = await open(a, { user: 'alice' });
    const onB = await open(b);
    await onA.subscribe('/lobby');
    await onB.subscribe(['/lobby', '/games/*']);
    for (const t of [a, b]) {
      const presence = await api(t, 'GET', '/api/presence?channel=/lobby');
      const sessions = (presence.json.sessions as Array<{ clientId: string; user: string | null }>).sort((x, y) => x.clientId.localeCompare(y.clientId));
      const expected = [
        { clientId: onA.clientId, user: 'alice' },
        { clientId: onB.clientId, user: null },
      ].sort((x, y) => x.clientId.localeCompare(y.clientId));
      assert.deepEqual(sessions, expected, 'both nodes see both sessions, and the user of the one on A');
      const channels = await api(t, 'GET', '/api/channels');
      assert.deepEqual(channels.json.channels, [
        { channel: '/games/*', subscribers: 1 },
        { channel: '/lobby', subscribers: 2 },
      ]);
    }
    await b.server.publish('/lobby', 'x');
    const stats = await api(a, 'GET', '/api/stats');
    assert.deepEqual(stats.json.history, { channels: 1, messages: 1 }, 'history is shared');
  });

  it('disconnects a session or every session of a user on whichever node holds them (POST /api/disconnect)', async () => {
    fresh();
    const a = await node();
    const b = await node();
    const alice1 = await open(a, { user: 'alice' });
    const alice2 = await open(b, { user: 'alice' });
    const bob = await open(a, { user: 'bob' });
    const byUser = await api(b, 'POST', '/api/disconnect', { user: 'alice' });
    assert.equal(byUser.status, 200);
    assert.deepEqual(byUser.json, { disconnected: 2 });
    await waitFor(() => !a.server.getSession(alice1.clientId) && !b.server.getSession(alice2.clientId), 3000, "alice's sessions on both nodes to end");
    assert.ok(a.server.getSession(bob.clientId), "bob's session is untouched");
    const byId = await api(b, 'POST', '/api/disconnect', { clientId: bob.clientId });
    assert.deepEqual([byId.status, byId.json], [200, { disconnected: 1 }]);
    await waitFor(() => !a.server.getSession(bob.clientId), 3000, "bob's session on node A to end");
    const unknown = await api(b, 'POST', '/api/disconnect', { clientId: bob.clientId });
    assert.equal(unknown.status, 404, 'an ended session is not found on any node');
  });

  it('lets one node hold a state channel, and says so (ERR_STATE_DUPLICATE, once) when two nodes serve it all the same', async () => {
    fresh();
    const a = await node();
    const b = await node();
    const errors = { a: [] as PerihelionError[], b: [] as PerihelionError[] };
    a.server.on('error', (error) => errors.a.push(error as PerihelionError));
    b.server.on('error', (error) => errors.b.push(error as PerihelionError));
    const onA = await a.server.state('/dup/doc', { n: 0 });
    await assert.rejects(b.server.state('/dup/doc', { n: 0 }), { code: 'ERR_STATE_DUPLICATE', message: new RegExp(`^node ${(a.server.engine as RedisEngine).nodeId} holds the state channel /dup/doc`) });
    // Node A's claim lost (as when the others took it for dead while it was cut off): B claims it too.
    await a.server.engine.releaseState!('/dup/doc');
    const onB = await b.server.state('/dup/doc', { n: 0 });
    await onA.update({ n: 1 });
    await onB.update({ n: 2 });
    await onA.update({ n: 3 });
    const duplicates = (list: PerihelionError[]): PerihelionError[] => list.filter((error) => error.code === 'ERR_STATE_DUPLICATE');
    await waitFor(() => duplicates(errors.a).length > 0 && duplicates(errors.b).length > 0, 3000, 'both nodes to say so');
    assert.equal(duplicates(errors.a).length, 1, 'once');
    assert.match(duplicates(errors.a)[0]!.message, new RegExp(`another process serves the state channel /dup/doc too \\(its epoch ${onB.epoch}`));
  });

  it('a holder taken for dead gives its state channel up to the node that claimed it meanwhile, whose copy its clients then reach', async () => {
    fresh();
    const a = await node({ heartbeatInterval: 100, nodeTimeout: 1000 });
    const b = await node({ heartbeatInterval: 100, nodeTimeout: 1000 });
    const errors: PerihelionError[] = [];
    a.server.on('error', (error) => errors.push(error as PerihelionError));
    const onA = await a.server.state('/fence/doc', { by: 'a' });
    // What the others do with a node silent past its timeout, made at once: it is forgotten, and
    // node B claims its channel (both in one transaction, before A's next heartbeat).
    type Internals = { nodeId: string; layout: { control: string }; connection: { readyCmd(): { multi(): { hdel(k: string, f: string): unknown; hset(k: string, f: string, v: string): unknown; exec(): Promise<unknown> } } } };
    const [engineA, engineB] = [a.server.engine, b.server.engine] as unknown as [Internals, Internals];
    const control = engineA.layout.control;
    const transaction = engineA.connection.readyCmd().multi();
    transaction.hdel(`${control}nodes`, engineA.nodeId);
    transaction.hset(`${control}states`, '/fence/doc', engineB.nodeId);
    await transaction.exec();
    const onB = await b.server.state('/fence/doc', { by: 'b' });
    await waitFor(() => !onA.isOpen, 3000, "node A to give its copy up at its next heartbeat");
    // (Node B's first patch may have been reported before: another process serving the channel.)
    const lost = errors.filter((error) => error.code === 'ERR_STATE_DUPLICATE' && / claimed /.test(error.message));
    assert.equal(lost.length, 1, 'said once');
    assert.match(lost[0]!.message, new RegExp(`^node ${engineB.nodeId} claimed the state channel /fence/doc while this node was taken for dead`));
    await assert.rejects(onA.update({ by: 'a again' }), /closed/);
    // A client of node A is answered by node B's copy now.
    const c = await open(a);
    c.peer.send([{ channel: '/service/state', clientId: c.clientId, id: 'snap', data: { channel: '/fence/doc', op: 'snapshot' } }]);
    // The answer follows the acknowledgement, carrying data.
    const reply = await c.peer.next((m) => m.id === 'snap' && (m.successful === false || m.data !== undefined), 'the snapshot', 5000);
    assert.deepEqual((reply.data as { value: unknown } | undefined)?.value, onB.get(), JSON.stringify(reply));
  });

  it("relays a channel's requests to the holder it looked up lately without asking Redis each time, and looks again once that holder has given it up", async () => {
    fresh();
    const [a, b, c] = [await node(), await node(), await node()];
    const onA = await a.server.state('/kept/doc', { by: 'a' });
    // Node B's lookups of holders, counted where they go to Redis.
    const connectionB = (b.server.engine as unknown as { connection: { script(name: string, ...rest: unknown[]): Promise<unknown> } }).connection;
    let lookups = 0;
    const script = connectionB.script.bind(connectionB);
    connectionB.script = (name, ...rest) => ((lookups += name === 'STATE_HOLDER' ? 1 : 0), script(name, ...rest));
    const reader = await open(b);
    let asked = 0;
    const snapshot = async (): Promise<Msg> => {
      const id = `snap-${++asked}`;
      reader.peer.send([{ channel: '/service/state', clientId: reader.clientId, id, data: { channel: '/kept/doc', op: 'snapshot' } }]);
      // The answer follows the acknowledgement, carrying data (or a refusal).
      return reader.peer.next((m) => m.id === id && (m.successful === false || m.data !== undefined), `snapshot ${id}`, 5000);
    };
    for (let i = 0; i < 3; i++) assert.deepEqual(((await snapshot()).data as { value: unknown }).value, { by: 'a' });
    assert.equal(lookups, 1, 'one lookup for three requests');
    // Node A gives it up and node C takes it: B's next request still goes to A, which says so (503).
    await onA.close();
    await c.server.state('/kept/doc', { by: 'c' });
    const stale = await snapshot();
    assert.equal(stale.successful, false);
    assert.match(String(stale.error), /^503:.*no longer holds/);
    assert.deepEqual(((await snapshot()).data as { value: unknown }).value, { by: 'c' }, 'looked up again, the new holder answers');
    assert.equal(lookups, 2);
  });

  it('delivers to one session on whichever node holds it (server.deliver and POST /api/deliver)', async () => {
    fresh();
    const a = await node();
    const b = await node();
    const onB = await open(b);
    assert.equal(await a.server.deliver(onB.clientId, '/private/note', 'from a'), true);
    const viaApi = await api(a, 'POST', '/api/deliver', { clientId: onB.clientId, channel: '/private/note', data: 'via the API of a' });
    assert.deepEqual(viaApi.json, { delivered: true });
    await waitFor(() => onB.data('/private/note').length === 2, 3000, 'two direct messages on B');
    assert.deepEqual(onB.data('/private/note').map((m) => m.data), ['from a', 'via the API of a']);
    assert.equal(await a.server.deliver('no-such-session', '/private/note', 'lost'), false);
    assert.equal((await api(a, 'POST', '/api/deliver', { clientId: 'no-such-session', channel: '/x', data: 1 })).status, 404);
  });

  it("removes a dead node's sessions and subscriptions once it stops beating, and publishes their presence leaves", async () => {
    fresh();
    const a = await node({ heartbeatInterval: 100, nodeTimeout: 500 });
    const { child, server: doomed } = await childNode(a);
    try {
      const there = await open(doomed);
      await there.subscribe('/watched');
      const here = await open(a);
      await here.subscribe('/watched');
      await here.subscribe('/presence/watched');
      assert.equal(await a.server.engine.subscriberCount('/watched'), 2);
      assert.equal(await a.server.deliver(there.clientId, '/x', 'reachable'), true);
      child.kill('SIGKILL');
      await once(child, 'exit');
      const killedAt = Date.now();
      let count = 2;
      while (count !== 1 && Date.now() - killedAt < 5000) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        count = await a.server.engine.subscriberCount('/watched');
      }
      assert.equal(count, 1, 'only the session of the live node is left');
      // The node that removed them says its members left: nobody else could.
      await waitFor(() => here.data('/presence/watched').some((m) => (m.data as { action: string; clientId: string }).clientId === there.clientId), 3000, 'the leave of the dead node\'s member');
      assert.deepEqual(here.data('/presence/watched').map((m) => m.data), [{ action: 'leave', clientId: there.clientId, user: null }]);
      assert.deepEqual(await a.server.engine.subscribers('/watched'), [here.clientId]);
      assert.equal(await a.server.deliver(there.clientId, '/x', 'gone'), false);
      assert.deepEqual(await (a.server.engine as RedisEngine).nodes(), [(a.server.engine as RedisEngine).nodeId]);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a node paused past the node timeout is taken for dead (its members leave) and, back, says its members again (they join)', async () => {
    fresh();
    const a = await node({ heartbeatInterval: 100, nodeTimeout: 500 });
    const { child, server: paused } = await childNode(a);
    try {
      const there = await open(paused);
      await there.subscribe('/paused');
      const here = await open(a);
      await here.subscribe('/presence/paused');
      const events = (): Msg[] => here.data('/presence/paused').map((m) => m.data as Msg).filter((event) => event.clientId === there.clientId);
      child.kill('SIGSTOP');
      await waitFor(() => events().length === 1, 5000, 'the leave of the paused node\'s member');
      child.kill('SIGCONT');
      await waitFor(() => events().length === 2, 5000, 'its join once it is back');
      assert.deepEqual(events().map((event) => event.action), ['leave', 'join']);
      assert.deepEqual(await a.server.engine.subscribers('/paused'), [there.clientId], 'registered again');
    } finally {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
  });

  it('registers a node again after Redis lost its data (a restart without persistence)', async () => {
    fresh();
    const a = await node({ heartbeatInterval: 100, nodeTimeout: 500 });
    const b = await node({ heartbeatInterval: 100, nodeTimeout: 500 });
    const onA = await open(a);
    await onA.subscribe('/survivor');
    await store.clear(prefix);
    assert.equal(await b.server.engine.subscriberCount('/survivor'), 0);
    const deadline = Date.now() + 3000;
    while ((await b.server.engine.subscriberCount('/survivor')) !== 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(await b.server.engine.subscriberCount('/survivor'), 1, 'node A registered its subscription again');
    assert.equal(await b.server.deliver(onA.clientId, '/x', 'found again'), true);
  });

  it('leaves no trace of its sessions in Redis when a node closes (history stays)', async () => {
    fresh();
    const a = await node();
    const onA = await open(a);
    await onA.subscribe(['/kept', '/p/*']);
    await a.server.publish('/kept', 1);
    await onA.peer.close();
    await a.close();
    nodes.splice(0);
    // Each partition used has its own chans and lru (two partitions on a cluster, likely).
    const left = [...new Set((await store.keys(prefix)).map((key) => key.slice(prefix.length)))].sort();
    // /presence/kept keeps the join and leave of the session (published before the node closed);
    // `layout` the partition count the nodes agreed on.
    // A presence channel's history (it yields to the others) is ordered apart from them, in `ychans`.
    assert.deepEqual(left, ['ch:/kept', 'ch:/presence/kept', 'chans', 'layout', 'log:/kept', 'log:/presence/kept', 'lru', 'ychans']);
  });
});
}

describe('cluster mode: Redis unreachable or going away', () => {
  const nodes: TestServer[] = [];
  after(async () => {
    await Promise.all(nodes.splice(0).map((t) => t.close()));
  });

  it('refuses to start with a clear error when Redis is not there', async () => {
    const server = createServer({ engine: new RedisEngine({ url: 'redis://127.0.0.1:1', connectTimeout: 1000 }) });
    await assert.rejects(server.whenReady(), (error: PerihelionError) => {
      assert.equal(error.code, 'ERR_ENGINE_UNAVAILABLE');
      assert.match(error.message, /cannot use Redis at redis:\/\/127\.0\.0\.1:1: .*ECONNREFUSED/);
      return true;
    });
    await server.close();
  });

  it('refuses to start on a database number this Redis does not have (it would have gone on in database 0)', async () => {
    await requireRedis();
    const url = `${REDIS_URL.replace(/\/\d*$/, '')}/99`;
    const server = createServer({ engine: new RedisEngine({ url, prefix: uniquePrefix('db99') }) });
    await assert.rejects(server.whenReady(), (error: PerihelionError) => {
      assert.equal(error.code, 'ERR_ENGINE_UNAVAILABLE');
      assert.match(error.message, /database 99 cannot be selected \(ERR DB index is out of range\)/);
      return true;
    });
    await server.close();
  });

  it('refuses a malformed Redis URL or option at once, saying what would be right', () => {
    assert.throws(() => new RedisEngine({ url: 'http://127.0.0.1:6379' }), { code: 'ERR_INVALID_OPTION', message: /must start with redis:\/\/ or rediss:\/\// });
    assert.throws(() => new RedisEngine({ url: '127.0.0.1:6379' }), { code: 'ERR_INVALID_OPTION', message: /redis:\/\/127\.0\.0\.1:6379/ });
    assert.throws(() => new RedisEngine({ url: 'redis://h:6379/zero' }), { code: 'ERR_INVALID_OPTION', message: /database must be a number/ });
    assert.throws(() => new RedisEngine({ heartbeatInterval: 1000, nodeTimeout: 1000 }), { code: 'ERR_INVALID_OPTION', message: /nodeTimeout/ });
  });

  it("keeps serving a node's own clients while Redis is away, reports it, and rejoins the cluster when it is back", async () => {
    await requireRedis();
    const prefix = uniquePrefix('outage');
    const proxy = await TcpProxy.start(new URL(REDIS_URL));
    try {
      const options = { prefix, heartbeatInterval: 100, nodeTimeout: 2000, commandTimeout: 1000 };
      const a = await startServer({ engine: new RedisEngine({ url: proxy.url, ...options }), apiKey: API_KEY });
      const b = await startServer({ engine: new RedisEngine({ url: REDIS_URL, ...options }) });
      nodes.push(a, b);
      const errors: unknown[] = [];
      a.server.on('error', (error) => errors.push(error));
      const onA = await client(a);
      await onA.subscribe('/local');
      const onB = await client(b);
      proxy.cut();
      await waitFor(() => errors.some((e) => (e as PerihelionError).code === 'ERR_ENGINE_UNAVAILABLE'), 5000, 'the outage to be reported');
      // A session on another node cannot be reached, but it is not "not found" either.
      await assert.rejects(a.server.deliver(onB.clientId, '/private/x', 1), { code: 'ERR_ENGINE_UNAVAILABLE' });
      for (const [path, body] of [
        ['/api/deliver', { clientId: onB.clientId, channel: '/private/x', data: 1 }],
        ['/api/disconnect', { clientId: onB.clientId }],
      ] as const) {
        const refused = await api(a, 'POST', path, body);
        assert.equal(refused.status, 503, `${path} while Redis is away`);
        assert.equal((refused.json.error as { code: string }).code, 'engine_unavailable');
      }
      assert.equal((await api(a, 'GET', '/api/history?channel=/local')).status, 503, "the cluster's history is in Redis");
      assert.deepEqual((await api(a, 'POST', '/api/deliver', { clientId: onA.clientId, channel: '/private/x', data: 'local' })).json, { delivered: true }, "this node's own sessions are still reached");
      assert.ok(b.server.getSession(onB.clientId), "the session on B was not ended");
      // B's client reaching A (a balancer without affinity): who holds its session cannot be
      // looked up, so it is told to try again in a moment, not that its session is unknown (a
      // 402 would make it handshake again, and every other client with it, for the whole outage).
      const astray = await fetch(a.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([{ channel: '/meta/connect', clientId: onB.clientId, connectionType: 'long-polling', id: 'astray' }]) });
      const [answer] = (await astray.json()) as Msg[];
      assert.equal(answer?.successful, false);
      assert.match(String(answer?.error), /^503::/);
      assert.deepEqual(answer?.advice, { reconnect: 'retry', interval: 1000 });
      // Anything else is judged here as before (402: the client starts a session again and
      // subscribes again); a subscribe answered 503 would be dropped for good by its client.
      const subscribe = await fetch(a.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([{ channel: '/meta/subscribe', clientId: onB.clientId, subscription: '/x', id: 'astray-sub' }]) });
      assert.match(String(((await subscribe.json()) as Msg[])[0]?.error), /^402:/);
      // A publish with an idempotency key is refused meanwhile: its key is checked in Redis, and
      // published here alone it would be published again by the backend's retry once Redis is back.
      const keyed = await api(a, 'POST', '/api/publish', { channel: '/local', data: 'keyed' }, { 'Idempotency-Key': 'while-away' });
      assert.equal(keyed.status, 503);
      assert.equal((keyed.json.error as { code: string }).code, 'engine_unavailable');
      // A client's publish with an idempotency key the same: 503, to be made again later.
      const keyedByClient = await onA.peer.request({ channel: '/local', clientId: onA.clientId, data: 'keyed', ext: { idempotencyKey: 'while-away' } });
      assert.equal(keyedByClient.successful, false);
      assert.match(String(keyedByClient.error), /^503:/);
      await a.server.publish('/local', 'while away');
      await waitFor(() => onA.data('/local').length === 1, 3000, 'the local message');
      assert.equal(onA.data('/local')[0]?.ext, undefined, 'no position without Redis');
      const late = await client(a);
      const reply = await late.subscribe('/local');
      assert.equal(reply.successful, true, 'subscribes still work, on this node');
      assert.equal(await a.server.engine.subscriberCount('/local'), 2, "answered from the node's own view");
      await proxy.restore();
        const deadline = Date.now() + 8000;
      while ((await b.server.engine.subscriberCount('/local')) !== 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(await b.server.engine.subscriberCount('/local'), 2, 'node A registered its sessions again');
      await b.server.publish('/local', 'from b, after');
      await waitFor(() => onA.data('/local').length === 2 && late.data('/local').length === 1, 5000, 'the cluster message on A');
      await onA.peer.close();
      await late.peer.close();
      await onB.peer.close();
    } finally {
      await Promise.all(nodes.splice(0).map((t) => t.close()));
      await proxy.close();
      await deleteKeys(prefix);
    }
  });
});

/** A TCP proxy to Redis that a test can cut (every connection dropped, none accepted) and restore. */
class TcpProxy {
  private server: TcpServer | null = null;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly target: URL,
    private port: number,
  ) {}

  static async start(target: URL): Promise<TcpProxy> {
    const proxy = new TcpProxy(target, 0);
    await proxy.restore();
    return proxy;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async restore(): Promise<void> {
    const server = createTcpServer((inbound) => {
      const outbound = connect(Number(this.target.port || 6379), this.target.hostname);
      for (const socket of [inbound, outbound]) {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
        socket.on('error', () => {
          inbound.destroy();
          outbound.destroy();
        });
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    server.listen(this.port, '127.0.0.1');
    await once(server, 'listening');
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }

  cut(): void {
    this.server?.close();
    this.server = null;
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.cut();
  }
}
