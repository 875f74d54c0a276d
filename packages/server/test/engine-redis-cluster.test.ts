/**
 * The Redis engine on a Redis Cluster: a local cluster of three shards started by this file, the
 * shared conformance suites against it, and what is particular to a cluster (channels spread
 * over every shard, each channel's keys in one slot, nodes agreeing on the partitions). The
 * layout's arithmetic is checked without Redis.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { PerihelionError, RedisEngine, type RedisEngineOptions } from '../src/index.js';
import { crc16, RedisLayout, SLOTS } from '../src/engine/redis-layout.js';
import { distributedEngineConformance, engineConformance, publication, RecordingHost, type EngineFixture } from './engine-conformance.js';
import { REDIS_URL, lruCase, startRedisCluster, uniquePrefix, type LocalRedisCluster } from './redis-fixture.js';
import { waitFor } from './helpers.js';

let cluster: LocalRedisCluster | null = null;

before(async () => {
  cluster = await startRedisCluster();
});
after(async () => {
  await cluster?.stop();
});

function clusterUrl(): string {
  if (!cluster) throw new Error('the local Redis Cluster did not start');
  return cluster.url;
}

function fixture(label: string): EngineFixture {
  let prefix = uniquePrefix(label);
  return {
    create: () => new RedisEngine({ url: clusterUrl(), cluster: true, prefix, commandTimeout: 3000 }),
    lru: lruCase(16),
    // The cluster is this file's own and goes at the end: a new prefix is a fresh store.
    reset: async () => void (prefix = uniquePrefix(label)),
  };
}

engineConformance('redis cluster', fixture('cluster'));
distributedEngineConformance('redis cluster', fixture('cluster-distributed'));

/** Runs `command` on one shard of the local cluster, by a connection of its own. */
async function onShard<T>(port: number, command: (client: Redis) => Promise<T>): Promise<T> {
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
  try {
    return await command(client);
  } finally {
    client.disconnect();
  }
}

/** Keys of one shard of the local cluster. */
function keysOn(port: number, pattern: string): Promise<string[]> {
  return onShard(port, (client) => client.keys(pattern));
}

/** The port of the shard that serves `slot`. */
function shardOf(slot: number): Promise<number> {
  return onShard(cluster!.ports[0]!, async (client) => {
    const ranges = await client.cluster('SLOTS');
    const primary = ranges.find(([low, high]) => slot >= low && slot <= high)?.[2];
    if (!primary) throw new Error(`no shard serves slot ${slot}`);
    return primary[1];
  });
}

/**
 * Two nodes of the local cluster under one prefix of their own: `publisher`, and `reader` whose
 * session "reader" subscribes to `pattern` (what it is given is in `readerHost`). Both are closed
 * once `run` is over.
 */
async function withPublisherAndReader(
  label: string,
  pattern: string,
  options: Partial<RedisEngineOptions>,
  run: (nodes: { publisher: RedisEngine; readerHost: RecordingHost }) => Promise<void>,
): Promise<void> {
  const prefix = uniquePrefix(label);
  const make = (): RedisEngine => new RedisEngine({ url: clusterUrl(), cluster: true, prefix, ...options });
  const [publisher, reader] = [make(), make()];
  const readerHost = new RecordingHost();
  await publisher.start(new RecordingHost());
  await reader.start(readerHost);
  try {
    await reader.addSession('reader');
    await reader.subscribe('reader', pattern);
    await run({ publisher, readerHost });
  } finally {
    await Promise.all([publisher.close(), reader.close()]);
  }
}

describe('the Redis engine on a Redis Cluster', () => {
  it('spreads channels over every shard, with each channel\'s position and history on one', async () => {
    const prefix = uniquePrefix('spread');
    const engine = new RedisEngine({ url: clusterUrl(), cluster: true, prefix });
    const host = new RecordingHost();
    await engine.start(host);
    try {
      await engine.addSession('reader');
      await engine.subscribe('reader', '/spread/**');
      const channels = Array.from({ length: 60 }, (_, i) => `/spread/${i}`);
      for (const channel of channels) await engine.publish(publication(channel, channel));
      assert.equal(host.received.get('reader')?.length, 60, 'every publish delivered');

      const shardOf = new Map<string, number>();
      for (const port of cluster!.ports) {
        const logs = await keysOn(port, `${prefix}*log:*`);
        const metas = await keysOn(port, `${prefix}*ch:*`);
        assert.ok(logs.length > 0, `shard ${port} holds some channels' histories (it holds ${logs.length})`);
        for (const key of logs) shardOf.set(`log ${key.slice(key.indexOf('log:') + 4)}`, port);
        for (const key of metas) shardOf.set(`meta ${key.slice(key.indexOf('ch:') + 3)}`, port);
      }
      for (const channel of channels) {
        assert.ok(shardOf.has(`log ${channel}`), `${channel} has a history`);
        assert.equal(shardOf.get(`meta ${channel}`), shardOf.get(`log ${channel}`), `${channel}'s position and history are on one shard`);
      }
      const history = await engine.history('/spread/7');
      assert.deepEqual(history?.payloads.map((payload) => (JSON.parse(payload) as { data: unknown }).data), ['/spread/7']);
      assert.deepEqual(await engine.historyStats(), { channels: 60, messages: 60 });
    } finally {
      await engine.close();
    }
  });

  it('recovers channels of several partitions under one wildcard, each seam exact, while they are published to', async () => {
    const prefix = uniquePrefix('seams');
    const layout = new RedisLayout(prefix, true, 16);
    // Six channels in six partitions (so on every shard, and one READ each).
    const channels: string[] = [];
    const used = new Set<number>();
    for (let i = 0; channels.length < 6; i++) {
      const k = layout.partitionOf(`/multi/${i}`);
      if (!used.has(k)) {
        used.add(k);
        channels.push(`/multi/${i}`);
      }
    }
    const make = (): RedisEngine => new RedisEngine({ url: clusterUrl(), cluster: true, prefix });
    const [publisher, reader] = [make(), make()];
    const readerHost = new RecordingHost();
    await publisher.start(new RecordingHost());
    await reader.start(readerHost);
    try {
      const total = 120;
      for (const channel of channels) for (let n = 1; n <= 20; n++) await publisher.publish(publication(channel, n));
      let published = 20;
      const publishing = (async () => {
        while (published < total) {
          published += 1;
          await Promise.all(channels.map((channel) => publisher.publish(publication(channel, published))));
        }
      })();
      const since = new Map<string, number>();
      const recover = [];
      for (const channel of channels) {
        const at = (await reader.history(channel, { limit: 0 }))!.position!;
        since.set(channel, at.offset - 10);
        recover.push({ channel, since: { epoch: at.epoch, offset: at.offset - 10 } });
      }
      await reader.addSession('moved');
      const outcome = await reader.subscribe('moved', '/multi/*', recover);
      assert.ok(outcome.recovered.every((one) => one.recovered && one.replayed >= 10), JSON.stringify(outcome.recovered));
      await publishing;
      for (const channel of channels) {
        await waitFor(() => readerHost.offsets('moved', channel).at(-1) === total, 5000, `${channel} to catch up`);
        const from = since.get(channel)!;
        assert.deepEqual(readerHost.offsets('moved', channel), Array.from({ length: total - from }, (_, i) => from + 1 + i), `${channel}: no gap, no duplicate`);
      }
    } finally {
      await Promise.all([publisher.close(), reader.close()]);
    }
  });

  it('carries on when a shard is killed and comes back empty: every partition reaches the other node again, subscriptions are registered again', async () => {
    await withPublisherAndReader('shard-restart', '/shards/**', { heartbeatInterval: 200, nodeTimeout: 1000, commandTimeout: 1000 }, async ({ publisher, readerHost }) => {
      const channels = Array.from({ length: 32 }, (_, i) => `/shards/${i}`);
      for (const channel of channels) await publisher.publish(publication(channel, 'before'));
      await waitFor(() => readerHost.data('reader').length === 32, 3000, 'every channel before the restart');
      // The shard that holds the control plane: sessions and subscriptions are lost with it.
      const controlShard = await shardOf(crc16('c') % SLOTS);
      await cluster!.restart(controlShard);
      // Until the publisher's connection to that shard is back, a publish there may fail: the
      // engine reports it; once back, every partition works again.
      // (Counted by round: what the reader did not hear while its connection to that shard was
      // being made again reaches it later, caught up from the history kept since the restart.)
      let delivered = 0;
      for (let attempt = 0; attempt < 20 && delivered < 32; attempt++) {
        for (const channel of channels) await publisher.publish(publication(channel, `after ${attempt}`)).catch(() => {});
        await new Promise((resolve) => setTimeout(resolve, 300));
        delivered = readerHost.data('reader').filter((data) => data === `after ${attempt}`).length;
      }
      assert.equal(delivered, 32, 'a round of publishes on every channel reaches the reader after the restart');
      // The reader's heartbeat finds its node forgotten once its own connection to that shard is
      // back, which may come after the publisher's (each reconnects with its own backoff).
      const deadline = Date.now() + 10_000;
      while ((await publisher.subscriberCount('/shards/**')) !== 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(await publisher.subscriberCount('/shards/**'), 1, 'the reader registered its subscription again');
    });
  });

  // ioredis makes a shard's subscriber connection again by itself when it ends, and its cluster
  // client stays "ready" meanwhile: what the shard published in between was lost to the node's
  // sessions that have no recovery of their own (CometD, Faye, the in-process listeners).
  it('catches a node up on what was published while its shard subscriber connections were cut, then hears the bus again', async () => {
    await withPublisherAndReader('shard-cut', '/cut/**', { commandTimeout: 2000 }, async ({ publisher, readerHost }) => {
      const channels = Array.from({ length: 8 }, (_, i) => `/cut/${i}`);
      for (const channel of channels) await publisher.publish(publication(channel, `${channel} 0`));
      await waitFor(() => readerHost.data('reader').length === 8, 3000, 'every channel heard before the cut');
      // Every pub/sub connection of every shard cut, the reader's among them; then published at
      // once, before ioredis has made them again.
      for (const port of cluster!.ports) await onShard(port, (client) => client.call('CLIENT', 'KILL', 'TYPE', 'pubsub'));
      await Promise.all(channels.map((channel) => publisher.publish(publication(channel, `${channel} 1`))));
      await waitFor(() => readerHost.data('reader').length === 16, 8000, () => `the messages of the cut caught up (${readerHost.data('reader').length - 8} of 8)`);
      // Heard live again afterwards, each once.
      for (const channel of channels) await publisher.publish(publication(channel, `${channel} 2`));
      await waitFor(() => readerHost.data('reader').length === 24, 5000, 'the messages after the cut');
      await new Promise((resolve) => setTimeout(resolve, 300));
      const got = readerHost.data('reader') as string[];
      for (const channel of channels) assert.deepEqual(got.filter((data) => data.startsWith(`${channel} `)), [0, 1, 2].map((n) => `${channel} ${n}`), `${channel}: each once, in order`);
    });
  });

  it('keeps sessions, subscriptions and live nodes in one slot, whichever shard holds it', async () => {
    const prefix = uniquePrefix('control');
    const engine = new RedisEngine({ url: clusterUrl(), cluster: true, prefix });
    await engine.start(new RecordingHost());
    try {
      await engine.addSession('one', 'user-1');
      await engine.subscribe('one', '/control/a');
      const shards = [];
      for (const port of cluster!.ports) if ((await keysOn(port, `${prefix}{c}*`)).length > 0) shards.push(port);
      assert.equal(shards.length, 1, 'every control key on one shard');
      assert.deepEqual(await engine.subscribers('/control/a'), ['one']);
      assert.deepEqual(await engine.sessionsOfUser('user-1'), ['one']);
      assert.deepEqual(await engine.nodes(), [engine.nodeId]);
    } finally {
      await engine.close();
    }
  });

  it("sends a message for one node past nodeMessageInlineBytes by way of a key in that node's slot, in order with the small ones", async () => {
    const prefix = uniquePrefix('mail');
    const make = (): RedisEngine => new RedisEngine({ url: clusterUrl(), cluster: true, prefix, nodeMessageInlineBytes: 1000 });
    const [a, b] = [make(), make()];
    const hostB = new RecordingHost();
    await a.start(new RecordingHost());
    await b.start(hostB);
    try {
      const sent = ['{"n":1}', JSON.stringify({ fill: 'y'.repeat(200_000) }), '{"n":2}'];
      assert.deepEqual(await Promise.all(sent.map((payload) => a.sendToNode(b.nodeId, payload))), [true, true, true]);
      await waitFor(() => hostB.nodeMessages.length === 3, 5000, () => `three messages on b (have ${hostB.nodeMessages.length}; reported ${hostB.errors.map(String).join("; ")})`);
      assert.deepEqual(hostB.errors, []);
      assert.deepEqual(hostB.nodeMessages.map(([, payload]) => payload), sent);
      for (const port of cluster!.ports) assert.deepEqual(await keysOn(port, `${prefix}*:mail:*`), [], 'taken, and so deleted');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('refuses to start a node that counts the partitions differently from the live nodes', async () => {
    const prefix = uniquePrefix('partitions');
    const first = new RedisEngine({ url: clusterUrl(), cluster: true, prefix, partitions: 16 });
    await first.start(new RecordingHost());
    try {
      const second = new RedisEngine({ url: clusterUrl(), cluster: true, prefix, partitions: 8 });
      await assert.rejects(second.start(new RecordingHost()), (error: PerihelionError) => {
        assert.equal(error.code, 'ERR_ENGINE_UNAVAILABLE');
        assert.match(error.message, /live nodes of this cluster .* use 16 partitions and this node 8/);
        return true;
      });
    } finally {
      await first.close();
    }
    // Once no node is alive the number may change.
    const later = new RedisEngine({ url: clusterUrl(), cluster: true, prefix, partitions: 8 });
    await later.start(new RecordingHost());
    await later.close();
  });

  it('says which node could not be reached when no node of the cluster answers', async () => {
    const engine = new RedisEngine({ url: 'redis://127.0.0.1:1,redis://127.0.0.1:2', cluster: true, connectTimeout: 500 });
    await assert.rejects(engine.start(new RecordingHost()), /cannot use Redis at redis:\/\/127\.0\.0\.1:1\/?,redis:\/\/127\.0\.0\.1:2\/?: None of startup nodes is available \(redis:\/\/127\.0\.0\.1:1\/?: connect ECONNREFUSED/);
  });

  it('says so when the cluster option is given a plain Redis, or left out for a Redis Cluster node', async () => {
    const plain = new RedisEngine({ url: REDIS_URL, cluster: true, connectTimeout: 1000, prefix: uniquePrefix('plain') });
    await assert.rejects(plain.start(new RecordingHost()), /is a Redis without cluster mode: leave out the cluster option \(--redis-cluster\)/);
    const node = new RedisEngine({ url: `redis://127.0.0.1:${cluster!.ports[0]}`, prefix: uniquePrefix('node') });
    await assert.rejects(node.start(new RecordingHost()), /it is a node of a Redis Cluster: give the cluster option \(--redis-cluster\)/);
  });
});

describe('Redis engine options for a cluster', () => {
  const refused = (options: ConstructorParameters<typeof RedisEngine>[0], message: RegExp): void => {
    assert.throws(() => new RedisEngine(options), (error: PerihelionError) => error.code === 'ERR_INVALID_OPTION' && message.test(error.message));
  };

  it('refuses a prefix with braces, a database other than 0, a bad partition count and a bad URL in the list', () => {
    refused({ prefix: 'app{1}:' }, /"prefix" may not hold braces/);
    refused({ cluster: true, url: 'redis://127.0.0.1:7001/3' }, /only database 0/);
    refused({ partitions: 0.5 }, /"partitions" must be a whole number from 1 to 1024/);
    refused({ partitions: 5000 }, /"partitions" must be a whole number from 1 to 1024/);
    refused({ cluster: true, url: 'redis://127.0.0.1:7001,http://127.0.0.1:7002' }, /must start with redis:\/\//);
    refused({ cluster: 'yes' as unknown as boolean }, /"cluster" must be true or false/);
  });

  it('defaults to 16 partitions on a cluster and 1 on one Redis', () => {
    assert.equal(new RedisEngine({ cluster: true }).options.partitions, 16);
    assert.equal(new RedisEngine({}).options.partitions, 1);
  });
});

describe('the Redis layout', () => {
  it('hashes as Redis Cluster does (CRC16/XMODEM)', () => {
    // The check value of the Redis Cluster specification.
    assert.equal(crc16('123456789'), 0x31c3);
    // Of the UTF-8 bytes, as Redis sees a key: 2-, 3- and 4-byte characters and a lone surrogate.
    const bytewise = (text: string): number => {
      let crc = 0;
      for (const byte of new TextEncoder().encode(text)) {
        crc ^= byte << 8;
        for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
      }
      return crc;
    };
    for (const text of ['/chat/é', '/rooms/日本', '/emoji/🚀', '/lone/\ud800x', '', '/a/b']) assert.equal(crc16(text), bytewise(text), JSON.stringify(text));
  });

  it('gives each partition a tag in its even share of the slots, and every channel one partition', () => {
    const layout = new RedisLayout('p:', true, 16);
    for (let k = 0; k < 16; k++) {
      const tag = /\{([^}]+)\}/.exec(layout.data(k))![1]!;
      const slot = crc16(tag) % SLOTS;
      assert.ok(slot >= (k * SLOTS) / 16 && slot < ((k + 1) * SLOTS) / 16, `partition ${k}'s slot ${slot}`);
      assert.equal(layout.bus(k), `${layout.data(k)}bus`, 'a partition\'s bus shares its slot');
    }
    const counts = new Array<number>(16).fill(0);
    for (let i = 0; i < 16_000; i++) counts[layout.partitionOf(`/room/${i}`)]! += 1;
    for (const count of counts) assert.ok(count > 700 && count < 1300, `partitions are used evenly: ${counts.join(' ')}`);
    assert.equal(layout.partitionOf('/room/1'), new RedisLayout('other:', true, 16).partitionOf('/room/1'), 'the same on every node');
  });

  it('keeps the names of earlier versions on one Redis with one partition', () => {
    const layout = new RedisLayout('perihelion:', false, 1);
    assert.equal(layout.control, 'perihelion:');
    assert.equal(layout.data(0), 'perihelion:');
    assert.equal(layout.bus(0), 'perihelion:bus');
    assert.equal(layout.node('n1'), 'perihelion:node:n1');
    assert.deepEqual(layout.channelsFor('n1'), ['perihelion:bus', 'perihelion:node:n1']);
    assert.equal(layout.publishCommand, 'PUBLISH');
    assert.equal(new RedisLayout('perihelion:', true, 4).publishCommand, 'SPUBLISH');
  });

  it("keeps a node's large messages under its channel's name, in its hash slot on a cluster", () => {
    assert.equal(new RedisLayout('perihelion:', false, 1).nodeMail('n1'), 'perihelion:node:n1:mail:');
    const cluster = new RedisLayout('perihelion:', true, 16);
    assert.equal(cluster.nodeMail('n1'), 'perihelion:{node:n1}:mail:');
    // Redis Cluster hashes a name by its first {tag}: the channel's and its messages' are one.
    const tag = (name: string): string | undefined => /\{([^}]+)\}/.exec(name)?.[1];
    assert.equal(tag(cluster.nodeMail('n1')), tag(cluster.node('n1')));
    assert.equal(tag(cluster.node('n1')), 'node:n1');
  });
});
