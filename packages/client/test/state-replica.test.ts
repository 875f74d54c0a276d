/**
 * Replicas of a state channel through the real client: following the server's patches,
 * optimistic proposals accepted or rolled back, ten clients editing one list at once through
 * network cuts and converging on the server's value, a resync after a missed version, and a
 * server restart (a new epoch) under live replicas.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ProposalError, replicate, type JsonValue, type Replica, type ReplicaChange } from '@perihelion/state';
import type { Client } from '../src/index.js';
import { PerihelionError, RedisEngine } from '@perihelion/server';
import { Net, client, requireRedis, sleep, startServer, waitFor, type TestServer } from './helpers.js';

// A type alias, not an interface: JSON types are checked structurally.
type Todo = { id: string; text: string; done: boolean };

const servers: TestServer[] = [];
const clients: Client[] = [];
const replicas: Replica[] = [];

async function server(port = 0): Promise<TestServer> {
  const t = await startServer({}, port);
  servers.push(t);
  return t;
}

async function follow(t: TestServer, channel: string, net = new Net()): Promise<Replica> {
  const c = client(t.url, { transports: ['websocket', 'long-polling'] }, net);
  clients.push(c);
  const replica = await replicate(c, channel);
  replicas.push(replica);
  return replica;
}

afterEach(async () => {
  await Promise.all(replicas.splice(0).map((replica) => replica.close().catch(() => {})));
  await Promise.all(clients.splice(0).map((c) => c.disconnect().catch(() => {})));
  await Promise.all(servers.splice(0).map((t) => t.close()));
});

describe('state replica', () => {
  it("starts from a snapshot and follows the server's patches, reporting each change", async () => {
    const t = await server();
    const state = await t.server.state('/doc', { title: 'draft', tags: [] as string[] });
    await state.update((draft) => {
      (draft as { title: string }).title = 'first';
    });
    const replica = await follow(t, '/doc');
    assert.deepEqual(replica.value, { title: 'first', tags: [] });
    assert.equal(replica.version, 1);
    const changes: ReplicaChange[] = [];
    replica.onChange((change) => changes.push(change));
    await state.update((draft) => {
      (draft as { tags: string[] }).tags.push('news');
    });
    await waitFor(() => replica.version === 2, 3000, 'version 2');
    assert.deepEqual(replica.value, state.get());
    assert.deepEqual(changes.map((c) => [c.cause, c.version, c.patch]), [['server', 2, [{ op: 'add', path: '/tags/0', value: 'news' }]]]);
  });

  it('applies a proposal at once, and keeps it when the server accepts it', async () => {
    const t = await server();
    const state = await t.server.state('/todos', [] as Todo[], { validate: () => true });
    const replica = await follow(t, '/todos');
    const accepted = replica.propose((draft) => {
      (draft as unknown as Todo[]).push({ id: 'a', text: 'milk', done: false });
    });
    assert.deepEqual(replica.value, [{ id: 'a', text: 'milk', done: false }], 'optimistic: shown before the server answers');
    assert.equal(await accepted, 1);
    assert.deepEqual(state.get(), [{ id: 'a', text: 'milk', done: false }]);
    await waitFor(() => replica.version === 1 && replica.pendingCount === 0, 3000, 'the replica to confirm it');
    assert.deepEqual(replica.value, state.get());
  });

  it('rolls a refused proposal back and rejects with the reason', async () => {
    const t = await server();
    await t.server.state('/todos', [] as Todo[], {
      validate: ({ next }) => ((next as unknown as Todo[]).every((todo) => todo.text.length <= 10) ? true : 'a todo is at most 10 characters'),
    });
    const replica = await follow(t, '/todos');
    const changes: string[] = [];
    replica.onChange((change) => changes.push(change.cause));
    const refused = replica.propose([{ op: 'add', path: '/-', value: { id: 'x', text: 'far too long a todo', done: false } }]);
    assert.equal((replica.value as unknown[]).length, 1);
    await assert.rejects(refused, (error: ProposalError) => error instanceof ProposalError && /at most 10 characters/.test(error.message));
    assert.deepEqual(replica.value, [], 'rolled back');
    assert.deepEqual(changes, ['propose', 'rollback']);
  });

  it('ten clients editing one list at once, through network cuts, converge on the server value, recovering missed patches rather than whole documents', async () => {
    const t = await server();
    const state = await t.server.state('/list', [] as Todo[], { validate: () => true });
    const snapshots = countSnapshots(t);
    const nets = Array.from({ length: 10 }, () => new Net());
    const all = await Promise.all(nets.map((net) => follow(t, '/list', net)));
    let reconnects = 0;
    for (const c of clients) c.on('connecting', () => void reconnects++);
    const outcomes: Array<Promise<'accepted' | 'refused'>> = [];
    const settle = (p: Promise<number>): Promise<'accepted' | 'refused'> =>
      p.then(
        () => 'accepted' as const,
        (error: unknown) => {
          assert.ok(error instanceof ProposalError, String(error));
          return 'refused' as const;
        },
      );
    for (let round = 0; round < 5; round++) {
      all.forEach((replica, i) => {
        // Appends rebase over each other: every one of them goes through.
        outcomes.push(settle(replica.propose((draft) => void (draft as unknown as Todo[]).push({ id: `c${i}-r${round}`, text: `item ${i}.${round}`, done: false }))));
        // Everyone ticks the first item's box: those made on a stale version conflict.
        if ((draft0Length(replica) ?? 0) > 0) outcomes.push(settle(replica.propose([{ op: 'replace', path: '/0/done', value: (i + round) % 2 === 0 }])));
      });
      // A few lines go down for a moment and come back.
      if (round === 1 || round === 3) {
        for (const net of nets.slice(round, round + 3)) net.cut();
        await sleep(150);
        for (const net of nets) net.restore();
      }
      await sleep(30);
    }
    const results = await Promise.all(outcomes);
    const value = state.get() as unknown as Todo[];
    const appended = value.map((todo) => todo.id).sort();
    assert.equal(appended.length, 50, 'every append was applied exactly once');
    assert.equal(new Set(appended).size, 50);
    await waitFor(() => all.every((replica) => replica.version === state.version && replica.pendingCount === 0), 10_000, 'every replica to reach the server version');
    for (const replica of all) assert.deepEqual(replica.value, state.get(), 'a replica differs from the server');
    assert.ok(reconnects >= 3, `the cuts made clients reconnect (${reconnects} times)`);
    // After the first snapshot each, the cut lines recovered the patches they missed: no replica needed the whole document again.
    assert.equal(snapshots.count, all.length, 'one snapshot per replica, at the start');
    assert.ok(results.filter((r) => r === 'accepted').length >= 50, `accepted: ${results.filter((r) => r === 'accepted').length}`);
  });

  it('takes a new snapshot when it misses a version, and goes on from there', async () => {
    const t = await server();
    const state = await t.server.state('/counter', { n: 0 });
    const replica = await follow(t, '/counter');
    const causes: string[] = [];
    replica.onChange((change) => causes.push(change.cause));
    await state.update({ n: 1 });
    await waitFor(() => replica.version === 1, 3000, 'version 1');
    // A patch from two versions ahead (as if one was lost on the way): the replica cannot apply it.
    await t.server.publish('/counter', { epoch: state.epoch, version: 3, patch: [{ op: 'replace', path: '/n', value: 99 }] });
    await waitFor(() => causes.includes('snapshot'), 3000, 'a snapshot after the gap');
    assert.deepEqual([replica.value, replica.version], [{ n: 1 }, 1], "the server's value, not the stray patch");
    await state.update({ n: 2 });
    await waitFor(() => replica.version === 2, 3000, 'version 2 after the resync');
    assert.deepEqual(replica.value, { n: 2 });
  });

  it('takes a snapshot by itself when it was away longer than the history keeps, and goes on from there', async () => {
    const t = await startServer({ historySize: 2 });
    servers.push(t);
    const state = await t.server.state('/counter', { n: 0 });
    const snapshots = countSnapshots(t);
    const net = new Net();
    const replica = await follow(t, '/counter', net);
    const causes: string[] = [];
    replica.onChange((change) => causes.push(change.cause));
    net.cut();
    for (let n = 1; n <= 6; n++) await state.update({ n });
    net.restore();
    await waitFor(() => replica.version === 6, 10_000, 'the replica to catch up after the cut');
    assert.deepEqual(replica.value, { n: 6 });
    assert.equal(snapshots.count, 2, 'the first snapshot, and one after a recovery that could not replay everything');
    assert.ok(causes.includes('snapshot'), `changes: ${causes.join(', ')}`);
    await state.update({ n: 7 });
    await waitFor(() => replica.version === 7, 3000, 'version 7 after the resync');
    assert.deepEqual(replica.value, { n: 7 });
  });

  it('follows a server restarted under it (a new epoch), and proposals go on', async () => {
    let saved: { value: JsonValue; version: number } | undefined;
    const options = {
      load: () => saved,
      save: (change: { value: JsonValue; version: number }) => void (saved = { value: change.value, version: change.version }),
      validate: () => true as const,
    };
    const first = await server();
    const state = await first.server.state('/board', { cards: [] as string[] }, options);
    const replica = await follow(first, '/board');
    await state.update({ cards: ['one'] });
    await waitFor(() => replica.version === 1, 3000, 'version 1');
    await first.close();
    servers.splice(servers.indexOf(first), 1);
    const second = await server(first.port);
    const resumed = await second.server.state('/board', { cards: [] as string[] }, options);
    assert.notEqual(resumed.epoch, state.epoch);
    await resumed.update({ cards: ['one', 'two'] });
    await waitFor(() => replica.version === 2 && (replica.value as { cards: string[] }).cards.length === 2, 10_000, 'the replica to follow the restarted server');
    assert.equal(await replica.propose((draft) => void (draft as { cards: string[] }).cards.push('three')), 3);
    assert.deepEqual(resumed.get(), { cards: ['one', 'two', 'three'] });
  });

  it('with the Redis engine, whose history outlives the server, takes a snapshot of a restarted server at once, not at its next change', async () => {
    await requireRedis();
    const prefix = `state-replica-${process.pid}-${Date.now()}:`;
    const redisServer = async (port = 0): Promise<TestServer> => {
      const t = await startServer({ engine: new RedisEngine({ url: 'redis://127.0.0.1:6379', prefix }) }, port);
      servers.push(t);
      return t;
    };
    const first = await redisServer();
    const state = await first.server.state('/gen', { gen: 1, a: 0 });
    const replica = await follow(first, '/gen');
    await state.update({ gen: 1, a: 1 });
    await waitFor(() => replica.version === 1, 3000, 'version 1');
    await first.close();
    servers.splice(servers.indexOf(first), 1);
    // A new process, no saved state: a new epoch at version 0. The replica recovers what Redis
    // kept (nothing missed: recovery succeeds), and the new channel's announcement is its cue.
    const second = await redisServer(first.port);
    const restarted = await second.server.state('/gen', { gen: 2, a: 0 });
    await waitFor(() => (replica.value as { gen: number }).gen === 2, 10_000, 'the replica to take the restarted state');
    assert.equal(replica.version, 0);
    assert.deepEqual(replica.value, restarted.get());
  });
});

describe('state replica across a cluster (Redis engine)', () => {
  /** Two nodes on one Redis, under a prefix of their own. */
  async function cluster(): Promise<[TestServer, TestServer]> {
    await requireRedis();
    const prefix = `state-cluster-${process.pid}-${Date.now()}:`;
    const node = async (): Promise<TestServer> => {
      const t = await startServer({ engine: new RedisEngine({ url: 'redis://127.0.0.1:6379', prefix }) });
      servers.push(t);
      return t;
    };
    return [await node(), await node()];
  }

  it("a client of another node starts from the holder's snapshot and its proposals are decided there, for its own session", async () => {
    const [holder, other] = await cluster();
    const proposers: Array<{ id: string; data: number }> = [];
    const state = await holder.server.state('/todos', [] as Todo[], {
      validate: ({ session, next }) => {
        proposers.push({ id: session.id, data: session.data.size });
        return (next as unknown as Todo[]).every((todo) => todo.text.length <= 10) ? true : 'a todo is at most 10 characters';
      },
    });
    await state.update([{ id: 'a', text: 'milk', done: false }]);
    // A client of the other node, before that node ever heard of the channel: a forged patch is
    // refused (the node asks who holds the channel), other data on other channels is not.
    const forger = client(other.url, { transports: ['long-polling'] });
    clients.push(forger);
    await forger.connect();
    await assert.rejects(forger.publish('/todos', { epoch: 'forged', version: 2, patch: [{ op: 'replace', path: '', value: [] }] }), /a state channel changes through proposals/);
    await forger.publish('/elsewhere', { epoch: 'fine', version: 1, patch: [] });
    await forger.publish('/todos-notes', 'plain data');
    const elsewhere = await follow(other, '/todos');
    const here = await follow(holder, '/todos');
    const elsewhereId = clients.at(-2)!.clientId!;
    assert.ok(other.server.getSession(elsewhereId), 'the first replica is a session of the other node');
    assert.deepEqual(elsewhere.value, state.get(), "the holder's value, through the other node");
    // That node now knows the channel for a state channel: any publish there is refused, as on its holder.
    await assert.rejects(clients.at(-2)!.publish('/todos', 'not a patch'), /a state channel changes through proposals/);
    assert.equal(await elsewhere.propose([{ op: 'add', path: '/-', value: { id: 'b', text: 'bread', done: false } }]), 2);
    assert.deepEqual(state.get(), [{ id: 'a', text: 'milk', done: false }, { id: 'b', text: 'bread', done: false }], 'decided and kept by the holder');
    assert.deepEqual(proposers, [{ id: elsewhereId, data: 0 }], "the hook saw the proposer's own session, held by the other node (its data stays there)");
    await waitFor(() => here.version === 2 && elsewhere.version === 2 && elsewhere.pendingCount === 0, 3000, 'both replicas at version 2');
    assert.deepEqual(here.value, elsewhere.value);

    const refused = elsewhere.propose([{ op: 'add', path: '/-', value: { id: 'x', text: 'far too long a todo', done: false } }]);
    await assert.rejects(refused, (error: ProposalError) => error instanceof ProposalError && /at most 10 characters/.test(error.message));
    assert.equal((elsewhere.value as unknown[]).length, 2, 'rolled back');
  });

  it('one node holds a state channel: another that creates it is told which, and may once it is closed', async () => {
    const [holder, other] = await cluster();
    const first = await holder.server.state('/board', { items: 1 });
    await assert.rejects(other.server.state('/board', { items: 2 }), (error: PerihelionError) => {
      assert.equal(error.code, 'ERR_STATE_DUPLICATE');
      assert.match(error.message, /node [0-9a-f]+ holds the state channel \/board: this node's clients reach it there/);
      return true;
    });
    const replica = await follow(other, '/board');
    assert.deepEqual(replica.value, { items: 1 });
    await first.close();
    const second = await other.server.state('/board', { items: 2 }, { validate: () => true });
    await waitFor(() => (replica.value as { items: number }).items === 2, 10_000, 'the replica to follow the new holder');
    assert.equal(await replica.propose([{ op: 'replace', path: '/items', value: 3 }]), 1);
    assert.deepEqual(second.get(), { items: 3 });
  });

  it('a request for a holder that is gone is answered "unavailable" (503) at once, and one for a state channel nobody holds "invalid channel" (405)', async () => {
    const [holder, other] = await cluster();
    await holder.server.state('/gone', { v: 1 });
    const c = client(other.url, { transports: ['long-polling'] });
    clients.push(c);
    await c.connect();
    const snapshot = (await c.request('/service/state', { channel: '/gone', op: 'snapshot' })) as { value: unknown };
    assert.deepEqual(snapshot.value, { v: 1 });
    // A node taken for the holder that holds the channel no longer (closed, or lost meanwhile): ask again.
    const moved = await holder.server.state('/moved', { v: 1 });
    await moved.close();
    assert.equal(await holder.server.engine.claimState!('/moved'), null, 'the claim made again, without the channel');
    await assert.rejects(c.request('/service/state', { channel: '/moved', op: 'snapshot' }), /Temporarily unavailable: the node asked no longer holds the state channel; ask again/);
    // The holder dies without a word (a crash): its last heartbeat is recent and its claim stands
    // until its node timeout, but nobody hears what is sent to it. (Made so in Redis after a
    // close, which would have given the claim up.)
    const holderId = (holder.server.engine as RedisEngine).nodeId;
    await holder.close();
    servers.splice(servers.indexOf(holder), 1);
    type Internals = { layout: { control: string }; connection: { readyCmd(): { time(): Promise<[string, string]>; hset(key: string, field: string, value: string): Promise<unknown> } } };
    const { layout, connection } = other.server.engine as unknown as Internals;
    const redis = connection.readyCmd();
    const [seconds] = await redis.time();
    await redis.hset(`${layout.control}nodes`, holderId, String(Number(seconds) * 1000));
    await redis.hset(`${layout.control}states`, '/gone', holderId);
    const started = Date.now();
    await assert.rejects(c.request('/service/state', { channel: '/gone', op: 'snapshot' }), /Temporarily unavailable: the state channel cannot be reached: node [0-9a-f]+, which holds it, is gone/);
    assert.ok(Date.now() - started < 2000, 'answered at once');
    await assert.rejects(c.request('/service/state', { channel: '/nobody', op: 'snapshot' }), /Invalid channel: no state channel of that name/);
  });
});

/** Counts the snapshots the server is asked for. */
function countSnapshots(t: TestServer): { count: number } {
  const counter = { count: 0 };
  t.server.addExtension({
    incoming: (message) => {
      if (message.channel === '/service/state' && (message.data as { op?: unknown } | undefined)?.op === 'snapshot') counter.count++;
      return message;
    },
  });
  return counter;
}

function draft0Length(replica: Replica): number | undefined {
  return Array.isArray(replica.value) ? replica.value.length : undefined;
}
