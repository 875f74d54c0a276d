/**
 * Redis killed and restarted empty under two live nodes: a Redis of the test's own (a private
 * `redis-server` on a free port, without persistence), clients on both nodes receiving a numbered
 * stream published alternately on each node. Counted exactly: while Redis is away each node still
 * delivers its own publishes to its own clients; once Redis is back the nodes register their
 * sessions and subscriptions again and every client gets every later message once; nothing is
 * ever delivered twice; each node reports the outage.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { RedisEngine } from '../src/index.js';
import { FaultProxy } from './fault-proxy.js';
import { WsPeer, freePort, startServer, waitFor, type TestServer } from './helpers.js';
import { startRedis } from './redis-fixture.js';

/**
 * A describe with a redis-server of its own (its tests may kill and restart it): its port, its
 * process, and the nodes and clients its tests start, all closed after.
 */
function ownRedis(): { port: number; redis: ChildProcess | null; nodes: TestServer[]; peers: WsPeer[] } {
  const own = { port: 0, redis: null as ChildProcess | null, nodes: [] as TestServer[], peers: [] as WsPeer[] };
  before(async () => {
    own.port = await freePort();
    own.redis = await startRedis(own.port);
  });
  after(async () => {
    await Promise.all(own.peers.map((peer) => peer.close()));
    await Promise.all(own.nodes.map((t) => t.close()));
    own.redis?.kill('SIGKILL');
  });
  return own;
}

interface Reader {
  peer: WsPeer;
  node: 'a' | 'b';
  /** The sequence numbers received, in order. */
  seqs(): number[];
}

describe('Redis killed and restarted empty under live nodes', () => {
  const own = ownRedis();

  it('each node serves its own clients during the outage, every client gets every message once Redis is back, and nothing twice', { timeout: 60_000 }, async () => {
    const url = `redis://127.0.0.1:${own.port}`;
    const errors = { a: 0, b: 0 };
    /** What each node told, in order: 'error' and 'restored' events. */
    const told = { a: [] as string[], b: [] as string[] };
    for (const name of ['a', 'b'] as const) {
      const t = await startServer({ engine: new RedisEngine({ url, prefix: 'restart:', heartbeatInterval: 500, nodeTimeout: 2000, commandTimeout: 1000 }) });
      t.server.on('error', (error) => (errors[name]++, told[name].push(`error: ${error instanceof Error ? error.message : String(error)}`)));
      t.server.on('restored', (message) => told[name].push(`restored: ${message}`));
      own.nodes.push(t);
    }
    const [a, b] = own.nodes as [TestServer, TestServer];
    const readers: Reader[] = [];
    for (const [t, node] of [
      [a, 'a'],
      [a, 'a'],
      [b, 'b'],
      [b, 'b'],
    ] as const) {
      const peer = await WsPeer.open(t.wsUrl);
      own.peers.push(peer);
      const hs = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
      const clientId = hs.clientId as string;
      await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
      assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/stream' })).successful, true);
      readers.push({ peer, node, seqs: () => peer.received.filter((m) => m.channel === '/stream').map((m) => (m.data as { seq: number }).seq) });
    }

    // 0–59 with Redis, 60–119 without it, 120–239 once it is back (the nodes need a moment to come back too).
    const publishedOn = new Map<number, 'a' | 'b'>();
    const failed = new Set<number>();
    let restartedAt = -1;
    /** /ready of node a before the outage, near its end, and once Redis is back. */
    const readiness: Array<{ status: number; body: { status: string; reason?: string } }> = [];
    const ready = async (): Promise<void> => {
      const response = await fetch(`http://127.0.0.1:${a.address.port}/ready`);
      readiness.push({ status: response.status, body: (await response.json()) as { status: string; reason?: string } });
    };
    for (let seq = 0; seq < 240; seq++) {
      if (seq === 59 || seq === 119) await ready();
      if (seq === 60) own.redis!.kill('SIGKILL');
      if (seq === 120) {
        own.redis = await startRedis(own.port);
        restartedAt = seq;
      }
      const node = seq % 2 === 0 ? 'a' : 'b';
      publishedOn.set(seq, node);
      await (node === 'a' ? a : b).server.publish('/stream', { seq }).catch(() => failed.add(seq));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // A publish in flight as Redis dies fails (ERR_ENGINE_UNAVAILABLE: the caller knows it was not
    // published); once the node has noticed, it publishes to its own sessions.
    assert.ok([...failed].every((seq) => seq >= 60 && seq < 70), `only publishes at the moment Redis died failed: ${[...failed].join(',')}`);
    await waitFor(() => readers.every((r) => r.seqs().includes(239)), 10_000, 'the last message everywhere');
    await ready();
    // A balancer's readiness check sends new clients elsewhere while the node cannot reach Redis.
    assert.deepEqual(readiness.map((r) => r.status), [200, 503, 200], JSON.stringify(readiness));
    assert.equal(readiness[1]!.body.status, 'engine unavailable');
    assert.match(readiness[1]!.body.reason!, /^Redis at redis:\/\/127\.0\.0\.1:\d+ has not answered for \d+\.\d s; this node serves its own sessions only$/);
    await new Promise((resolve) => setTimeout(resolve, 300));

    for (const reader of readers) {
      const seqs = reader.seqs();
      assert.equal(new Set(seqs).size, seqs.length, `node ${reader.node}: nothing delivered twice`);
      for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!, `node ${reader.node}: in order`);
      const got = new Set(seqs);
      // Before the outage: everything.
      for (let seq = 0; seq < 60; seq++) assert.ok(got.has(seq), `node ${reader.node} client missed ${seq}, published before the outage`);
      // During it, and while the node comes back: at least everything its own node published.
      // What the nodes told says why, if one is missed (an echo awaited that never came, say).
      for (let seq = 60; seq < 240; seq++) if (publishedOn.get(seq) === reader.node && !failed.has(seq)) assert.ok(got.has(seq), `node ${reader.node} client missed ${seq}, its own node's publish during the outage; node ${reader.node} told: ${told[reader.node].join(' | ')}`);
      // After Redis is back and the nodes registered again (allow the first second): everything.
      for (let seq = restartedAt + 50; seq < 240; seq++) assert.ok(got.has(seq), `node ${reader.node} client missed ${seq}, published after Redis came back; told: a: ${told.a.join(' | ')}; b: ${told.b.join(' | ')}`);
      const during = seqs.filter((seq) => seq >= 60 && seq < 120).length;
      const rejoining = seqs.filter((seq) => seq >= 120 && seq < restartedAt + 50).length;
      console.log(`# node ${reader.node} client: ${seqs.length}/240 received; during the outage ${during}/60 (its own node's 30, ${failed.size} failed as Redis died); in the first second after the restart ${rejoining}/50`);
    }
    assert.ok(errors.a > 0 && errors.b > 0, 'each node reported the outage');
    // And told that Redis answers again, once, after its last error (and only once the node hears
    // the bus again: a publish meanwhile goes to its own sessions at once, not waiting for an echo
    // that cannot come): an operator reading the log sees the outage end.
    for (const name of ['a', 'b'] as const) {
      const restored = told[name].filter((event) => event.startsWith('restored'));
      assert.equal(restored.length, 1, `node ${name} told: ${told[name].join(' | ')}`);
      assert.ok(told[name].at(-1)!.startsWith('restored'), `node ${name} reported an error after saying Redis was back: ${told[name].join(' | ')}`);
      assert.match(restored[0]!, /^restored: Redis at redis:\/\/127\.0\.0\.1:\d+ answers again, \d+\.\d s after the first failure/);
    }
  });
});

describe('Redis that hangs (stopped, not gone) under a live node', () => {
  let port = 0;
  let redis: ChildProcess | null = null;
  const nodes: TestServer[] = [];

  before(async () => {
    port = await freePort();
    redis = await startRedis(port);
  });
  after(async () => {
    redis?.kill('SIGCONT');
    await Promise.all(nodes.map((t) => t.close()));
    redis?.kill('SIGKILL');
  });

  it('a publish while Redis hangs is answered 503 until a command finds it hung, then served locally at once; a session that ended meanwhile is not left listed once it answers again (no ghost in counts or presence)', { timeout: 30_000 }, async () => {
    const url = `redis://127.0.0.1:${port}`;
    const told: string[] = [];
    const restoredMessages: string[] = [];
    for (let i = 0; i < 2; i++) {
      const t = await startServer({ engine: new RedisEngine({ url, prefix: 'hang:', heartbeatInterval: 100, nodeTimeout: 10_000, commandTimeout: 300 }) });
      if (i === 0) {
        t.server.on('error', () => told.push('error'));
        t.server.on('restored', (message) => (told.push('restored'), restoredMessages.push(message)));
      } else t.server.on('error', () => {});
      nodes.push(t);
    }
    const [a, b] = nodes as [TestServer, TestServer];
    const peer = await WsPeer.open(a.wsUrl);
    const hs = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
    const clientId = hs.clientId as string;
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/ghost' })).successful, true);
    const neighbour = await WsPeer.open(a.wsUrl);
    const neighbourId = (await neighbour.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
    assert.equal(await b.server.engine.subscriberCount('/ghost'), 1);
    // As after a restart, Redis has forgotten the scripts: the first call of each fails once.
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true });
    await probe.connect();
    await probe.script('FLUSH');
    probe.disconnect();
    redis!.kill('SIGSTOP');
    // A publish while it hangs times out: the client is told the cluster cannot be reached (503),
    // not of a server error.
    const [published, also] = await Promise.all([
      peer.request({ channel: '/ghost', clientId, data: 'while hung', id: 'hung-publish' }),
      neighbour.request({ channel: '/ghost', clientId: neighbourId, data: 'while hung too', id: 'hung-publish-too' }),
    ]);
    for (const reply of [published, also]) {
      assert.equal(reply.successful, false);
      assert.match(String(reply.error), /^503::.*cannot be reached/);
    }
    // The session ends while Redis hangs: its removal times out (Redis answers NOSCRIPT later, to nobody).
    await peer.request({ channel: '/meta/disconnect', clientId });
    await peer.close();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const readyDuring = await fetch(`http://127.0.0.1:${a.address.port}/ready`);
    assert.equal(readyDuring.status, 503, 'a node that cannot reach Redis is not ready for new clients');
    assert.equal(((await readyDuring.json()) as { status: string }).status, 'engine unavailable');
    redis!.kill('SIGCONT');
    const deadline = Date.now() + 5000;
    while ((await b.server.engine.subscriberCount('/ghost').catch(() => -1)) !== 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(await b.server.engine.subscriberCount('/ghost'), 0, 'the ended session is no longer subscribed anywhere');
    assert.deepEqual(await b.server.engine.subscribers('/ghost'), []);
    // The connection never dropped, so no reconnect ended the outage: the heartbeat that went
    // through says Redis is back, once, and a failure after that is reported again.
    await waitFor(() => told.includes('restored'), 5000, 'the node saying Redis answers again');
    assert.ok(told.indexOf('error') < told.indexOf('restored'), told.join(' | '));
    assert.equal(told.filter((event) => event === 'restored').length, 1, told.join(' | '));
    // The second refusal was counted, not reported: the end of the outage says so.
    assert.match(restoredMessages[0]!, /\(1 more requests were answered 503 since the last report\)$/);
    await neighbour.close();
    assert.equal((await fetch(`http://127.0.0.1:${a.address.port}/ready`)).status, 200, 'ready again once Redis answers');
    const publisher = await WsPeer.open(a.wsUrl);
    const second = (await publisher.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
    assert.equal((await publisher.request({ channel: '/meta/subscribe', clientId: second, subscription: '/hung' })).successful, true);
    const before = told.length;
    redis!.kill('SIGSTOP');
    // Found hung by the first command that gets no answer within commandTimeout (300 ms here):
    // from then on the node serves its own sessions without asking Redis, as when it is gone.
    await waitFor(() => told.length > before, 3000, 'the node taking the hung Redis for away');
    assert.equal(told[before], 'error');
    const away = await fetch(`http://127.0.0.1:${a.address.port}/ready`);
    assert.equal(away.status, 503);
    assert.match(((await away.json()) as { reason: string }).reason, /has not answered for 0\.[3-9]|has not answered for [1-9]/, 'counted from when the command that found it hung was sent');
    // Six publishes, each answered at once and delivered to this node's subscriber (without a
    // position): none waits commandTimeout for Redis, and the log is not told six times.
    const sent = Date.now();
    publisher.send(Array.from({ length: 6 }, (_, i) => ({ channel: '/hung', clientId: second, data: i, id: `again-${i}` })));
    await publisher.next((m) => m.id === 'again-5', 'the last publish', 5000);
    await publisher.next((m) => m.channel === '/hung' && m.data === 5, 'the last message, delivered here', 5000);
    assert.ok(Date.now() - sent < 250, `answered within ${Date.now() - sent} ms, not after commandTimeout`);
    const answers = publisher.received.filter((m) => String(m.id).startsWith('again-'));
    assert.deepEqual(answers.map((m) => m.successful), [true, true, true, true, true, true]);
    assert.deepEqual(publisher.received.filter((m) => m.channel === '/hung' && m.data !== undefined).map((m) => m.data), [0, 1, 2, 3, 4, 5]);
    // A subscribe meanwhile is kept here at once (Redis is asked nothing), and written there later.
    assert.equal((await publisher.request({ channel: '/meta/subscribe', clientId: second, subscription: '/made-during' }, 1000)).successful, true);
    redis!.kill('SIGCONT');
    await waitFor(() => told.slice(before).includes('restored'), 5000, () => `the node saying Redis answers again, a second time (told: ${told.join(' | ')})`);
    const duringHang = told.slice(before, told.indexOf('restored', before));
    assert.deepEqual(duringHang, ['error'], `the hang was reported once: ${told.join(' | ')}`);
    // What the node did meanwhile is recorded in Redis once it answers: the other node sees it.
    const deadline2 = Date.now() + 5000;
    while ((await b.server.engine.subscriberCount('/made-during')) !== 1 && Date.now() < deadline2) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(await b.server.engine.subscriberCount('/made-during'), 1, 'the subscription made during the hang, recorded once Redis answers');
    await publisher.close();
  });
});

describe('A node whose bus subscription comes back after its commands', () => {
  let port = 0;
  let redis: ChildProcess | null = null;
  let proxy: FaultProxy | null = null;
  let node: TestServer | null = null;
  let other: TestServer | null = null;
  let peer: WsPeer | null = null;

  before(async () => {
    port = await freePort();
    redis = await startRedis(port);
    proxy = await FaultProxy.start(port);
  });
  after(async () => {
    await peer?.close();
    await node?.close();
    await other?.close();
    await proxy?.close();
    redis?.kill('SIGKILL');
  });

  it("delivers its own publishes to its sessions until it hears the bus again, once each, and says Redis is back only then", { timeout: 30_000 }, async () => {
    const told: Array<{ at: number; event: string }> = [];
    node = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${proxy!.port}`, prefix: 'resubscribe:', heartbeatInterval: 200, nodeTimeout: 5000, commandTimeout: 800 }) });
    node.server.on('error', (error) => told.push({ at: Date.now(), event: `error: ${error instanceof Error ? error.message : String(error)}` }));
    node.server.on('restored', (message) => told.push({ at: Date.now(), event: `restored: ${message}` }));
    peer = await WsPeer.open(node.wsUrl);
    const clientId = (await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/resub' })).successful, true);
    await node.server.publish('/resub', { seq: -1 });
    await peer.next((m) => m.channel === '/resub', 'the message before the cut', 3000);

    // Both lines to Redis cut; as they come back, each SUBSCRIBE reaches Redis 1.5 s late (longer
    // than commandTimeout: a node that waited for its publishes' echo would give them up).
    const holdMs = 1500;
    proxy!.holdUpstream = (chunk) => (/\$9\r\nsubscribe\r\n/i.test(chunk.toString('latin1')) ? holdMs : 0);
    const cutAt = Date.now();
    while (proxy!.inflict('reset'));
    const published: number[] = [];
    for (let seq = 0; Date.now() - cutAt < holdMs + 1500; seq++) {
      const ok = await node.server.publish('/resub', { seq }).then(
        () => true,
        () => false,
      );
      if (ok) published.push(seq);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    const seqs = peer.received.filter((m) => m.channel === '/resub').map((m) => (m.data as { seq: number }).seq);
    assert.deepEqual(seqs, [-1, ...published], `every publish that was accepted reached the node's own subscriber, once, in order (told: ${told.map((t) => t.event).join(' | ')})`);
    assert.ok(published.length > 40, `publishes went on through the cut: ${published.length}`);
    const events = told.map((t) => t.event);
    assert.equal(events.filter((event) => event.startsWith('restored')).length, 1, events.join(' | '));
    assert.ok(events.at(-1)!.startsWith('restored'), `nothing went wrong after Redis was said back: ${events.join(' | ')}`);
    assert.ok(!events.some((event) => /did not come back through Redis/.test(event)), events.join(' | '));
    const restoredAt = told.find((t) => t.event.startsWith('restored'))!.at;
    assert.ok(restoredAt - cutAt >= holdMs, `said back ${restoredAt - cutAt} ms after the cut, not before the subscription was (${holdMs} ms)`);

    // Hearing the bus again: a publish of another node's arrives.
    proxy!.holdUpstream = null;
    other = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${port}`, prefix: 'resubscribe:' }) });
    await other.server.publish('/resub', { seq: 'from the other node' });
    await peer.next((m) => m.channel === '/resub' && (m.data as { seq: unknown }).seq === 'from the other node', 'a publish of the other node', 3000);
  });
});

describe('A node whose bus subscription is lost while its publishes are on their way', () => {
  let port = 0;
  let redis: ChildProcess | null = null;
  let proxy: FaultProxy | null = null;
  const nodes: TestServer[] = [];
  const peers: WsPeer[] = [];

  /** A node through the proxy, and a client of it subscribed to `channel`. */
  async function subscribedNode(prefix: string, channel: string, told: string[]): Promise<{ node: TestServer; peer: WsPeer; nodeId: string; clientId: string }> {
    const engine = new RedisEngine({ url: `redis://127.0.0.1:${proxy!.port}`, prefix, heartbeatInterval: 200, nodeTimeout: 5000, commandTimeout: 1000 });
    const node = await startServer({ engine });
    nodes.push(node);
    node.server.on('error', (error) => told.push(`error: ${error instanceof Error ? error.message : String(error)}`));
    node.server.on('restored', (message) => told.push(`restored: ${message}`));
    const peer = await WsPeer.open(node.wsUrl);
    peers.push(peer);
    const clientId = (await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: channel })).successful, true);
    return { node, peer, nodeId: engine.nodeId, clientId };
  }

  before(async () => {
    port = await freePort();
    redis = await startRedis(port);
    proxy = await FaultProxy.start(port);
  });
  after(async () => {
    await Promise.all(peers.map((peer) => peer.close()));
    await Promise.all(nodes.map((node) => node.close()));
    await proxy?.close();
    redis?.kill('SIGKILL');
  });

  it('delivers to its own sessions what Redis published before the renewed SUBSCRIBE, although the answer came after it', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node, peer } = await subscribedNode('late-answer:', '/late', told);

    // Both lines cut. As they come back, the SUBSCRIBE reaches Redis 1.5 s late, and every answer
    // to the command connection reaches the node 400 ms late (so it is ready for commands about
    // 1 s after the cut): the publishes Redis runs in the 400 ms before the SUBSCRIBE are not
    // heard by the node, and their answers come after it heard Redis answer the SUBSCRIBE (the
    // answer to its PING).
    const cutAt = cutWithLateSubscribe();
    const published: number[] = [];
    const publishes: Array<Promise<void>> = [];
    for (let seq = 0; Date.now() - cutAt < 3000; seq++) {
      // Not awaited one by one: each answer takes 400 ms, and the window is as long.
      publishes.push(
        node.server.publish('/late', { seq }).then(
          () => void published.push(seq),
          () => {},
        ),
      );
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await Promise.all(publishes);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const seqs = peer.received.filter((m) => m.channel === '/late').map((m) => (m.data as { seq: number }).seq);
    published.sort((x, y) => x - y);
    assert.ok(published.length > 40, `publishes went on through the cut: ${published.length}`);
    assert.deepEqual([...seqs].sort((x, y) => x - y), published, `every publish that was accepted reached the node's own subscriber, once (told: ${told.join(' | ')})`);
    assert.ok(!told.some((event) => /did not come back through Redis/.test(event)), told.join(' | '));
    proxy!.holdUpstream = proxy!.holdDownstream = null;
  });

  it("does not wait out commandTimeout for the fence of a subscribe whose read Redis ran before the renewed SUBSCRIBE", { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node } = await subscribedNode('late-fence:', '/elsewhere', told);
    // Sessions to subscribe during the window, over HTTP (one request each: the frames of one
    // WebSocket are handled one after the other).
    const post = async (batch: unknown[]): Promise<Array<Record<string, unknown>>> => {
      const response = await fetch(node.url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(batch) });
      return (await response.json()) as Array<Record<string, unknown>>;
    };
    const sessions: string[] = [];
    for (let i = 0; i < 150; i++) sessions.push((await post([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]))[0]!.clientId as string);
    // The window of the test above.
    const cutAt = cutWithLateSubscribe();
    // A channel with history: its subscribe reads a position and sends a fence behind the read.
    const took: number[] = [];
    const subscribes: Array<Promise<void>> = [];
    for (const clientId of sessions) {
      if (Date.now() - cutAt > 3000) break;
      const sent = Date.now();
      subscribes.push(post([{ channel: '/meta/subscribe', clientId, subscription: '/fenced' }]).then(([reply]) => (assert.equal(reply!.successful, true, JSON.stringify(reply)), void took.push(Date.now() - sent))));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await Promise.all(subscribes);
    proxy!.holdUpstream = proxy!.holdDownstream = null;
    assert.ok(!told.some((event) => /fence did not come back/.test(event)), told.join(' | '));
    // Each is answered within the 400 ms its read's answer is held, and a little more.
    assert.ok(Math.max(...took) < 900, `the slowest subscribe took ${Math.max(...took)} ms (commandTimeout 1000)`);
  });

  it('delivers to its own sessions at once a publish whose echo was on its way when the subscriber connection dropped', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node, peer, nodeId } = await subscribedNode('lost-echo:', '/lost', told);
    // What Redis sends the node's subscriber connection (named after the node, see
    // RedisConnection.connect) is held 3 s: the publish is answered, its echo waits in the proxy;
    // then that connection alone is cut, and the echo with it.
    const itsSubscriber = (name: string): boolean => name === `perihelion:${nodeId}:sub`;
    proxy!.holdDownstream = (_chunk, name) => (itsSubscriber(name) ? 3000 : 0);
    const publishing = node.server.publish('/lost', { n: 1 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const cutAt = Date.now();
    assert.ok(proxy!.inflict('reset', Math.random, itsSubscriber), 'the subscriber connection was there to cut');
    proxy!.holdDownstream = null;
    const message = await peer.next((m) => m.channel === '/lost', 'the publish whose echo was lost', 3000);
    assert.deepEqual(message.data, { n: 1 });
    assert.ok(Date.now() - cutAt < 500, `delivered ${Date.now() - cutAt} ms after the cut, not after waiting for the echo (commandTimeout 1000 ms)`);
    await publishing;
    assert.ok(!told.some((event) => /did not come back through Redis/.test(event)), told.join(' | '));
    // Heard again: the next publish comes back through Redis, once.
    await waitFor(() => told.some((event) => event.startsWith('restored')), 5000, 'the node to hear the bus again');
    await node.server.publish('/lost', { n: 2 });
    await peer.next((m) => m.channel === '/lost' && (m.data as { n: number }).n === 2, 'the next publish', 3000);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(peer.received.filter((m) => m.channel === '/lost').map((m) => m.data), [{ n: 1 }, { n: 2 }]);
  });

  /**
   * Cuts every line to Redis; as they come back, the renewed SUBSCRIBE reaches Redis 1.5 s late and
   * every answer to a command connection reaches its node 400 ms late. Returns when it cut.
   */
  function cutWithLateSubscribe(): number {
    proxy!.holdUpstream = (chunk) => (/\$9\r\nsubscribe\r\n/i.test(chunk.toString('latin1')) ? 1500 : 0);
    proxy!.holdDownstream = (_chunk, name) => (name.endsWith(':cmd') ? 400 : 0);
    const cutAt = Date.now();
    while (proxy!.inflict('reset'));
    return cutAt;
  }

  /** Cuts the node's command connection 100 ms after a command matching `pattern` goes up it (held there `holdMs` first, if any). */
  function cutAfter(nodeId: string, pattern: RegExp, holdMs: number): () => Promise<boolean> | null {
    const itsCommands = (name: string): boolean => name === `perihelion:${nodeId}:cmd`;
    let cut: Promise<boolean> | null = null;
    proxy!.holdUpstream = (chunk, name) => {
      if (!itsCommands(name) || !pattern.test(chunk.toString('latin1'))) return 0;
      cut ??= new Promise((resolve) => setTimeout(() => resolve(proxy!.inflict('reset', Math.random, itsCommands)), 100));
      return holdMs;
    };
    return () => cut;
  }

  it('takes a publish whose answer was lost, but whose echo came, for published (not failed, so not retried and delivered twice)', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node, peer, nodeId } = await subscribedNode('lost-answer:', '/answer', told);
    // The answers to the node's commands held 600 ms; the publish reaches Redis, its echo comes
    // back on the other connection, and the command connection is cut before the answer.
    proxy!.holdDownstream = (_chunk, name) => (name === `perihelion:${nodeId}:cmd` ? 600 : 0);
    const cut = cutAfter(nodeId, /"n":1/, 0);
    const outcome = await node.server.publish('/answer', { n: 1 }).then(
      () => 'published',
      (error: Error) => `failed: ${error.message}`,
    );
    proxy!.holdUpstream = proxy!.holdDownstream = null;
    assert.ok(await cut(), 'the command connection was there to cut');
    assert.equal(outcome, 'published', told.join(' | '));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(peer.received.filter((m) => m.channel === '/answer').map((m) => m.data), [{ n: 1 }]);
  });

  it('publishes again a presence join that Redis never took (the command connection cut with the join on its way)', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node, peer: watcher, nodeId } = await subscribedNode('lost-join:', '/presence/room', told);
    const member = await WsPeer.open(node.wsUrl);
    peers.push(member);
    const clientId = (await member.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
    await member.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    // The join is held on its way to Redis, and its connection cut meanwhile: it never got there.
    const cut = cutAfter(nodeId, /"action":"join"/, 2000);
    assert.equal((await member.request({ channel: '/meta/subscribe', clientId, subscription: '/room' }, 5000)).successful, true);
    await waitFor(() => cut() !== null, 3000, 'the join on its way to Redis');
    assert.ok(await cut(), 'the command connection was there to cut');
    proxy!.holdUpstream = null;
    const join = await watcher.next((m) => m.channel === '/presence/room', 'the join, published again', 3000);
    assert.deepEqual([(join.data as { action: string }).action, (join.data as { clientId: string }).clientId], ['join', clientId]);
    assert.ok(told.some((event) => /publish on \/presence\/room failed/.test(event)), `the failure was reported: ${told.join(' | ')}`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(watcher.received.filter((m) => m.channel === '/presence/room').length, 1, 'one join');
  });

  // ioredis renews only the channels whose SUBSCRIBE Redis had answered on the connection before:
  // a line cut between its SUBSCRIBE and the answer left the node connected, subscribed to
  // nothing, and deaf for good.
  it('hears the bus again after its subscriber connection was cut between the renewed SUBSCRIBE and its answer', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { peer, nodeId } = await subscribedNode('cut-subscribe:', '/cut', told);
    const itsSubscriber = (name: string): boolean => name === `perihelion:${nodeId}:sub`;
    // Answers to the subscriber connection held 300 ms; the first SUBSCRIBE after the cut below is
    // cut 100 ms after it reached Redis, its answer still held.
    proxy!.holdDownstream = (_chunk, name) => (itsSubscriber(name) ? 300 : 0);
    let renewed = 0;
    proxy!.holdUpstream = (chunk, name) => {
      if (itsSubscriber(name) && /subscribe/i.test(chunk.toString('latin1')) && ++renewed === 1) setTimeout(() => proxy!.inflict('reset', Math.random, itsSubscriber), 100);
      return 0;
    };
    assert.ok(proxy!.inflict('reset', Math.random, itsSubscriber));
    await waitFor(() => renewed >= 2, 10_000, 'the SUBSCRIBE sent again after the second cut');
    proxy!.holdUpstream = proxy!.holdDownstream = null;
    await waitFor(() => told.some((event) => event.startsWith('restored')), 10_000, () => `the node to hear Redis again (told: ${told.join(' | ')})`);
    const other = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${port}`, prefix: 'cut-subscribe:' }) });
    nodes.push(other);
    await other.server.publish('/cut', 'from the other node');
    await peer.next((m) => m.channel === '/cut', 'a publish of the other node', 3000);
  });

  // A node that hears nothing of the bus for a while misses what the other nodes publish; a
  // CometD or Faye client has no recovery of its own, so the node catches it up.
  it('catches its sessions and its in-process listeners up on what the other nodes published while it did not hear the bus, in order, once', { timeout: 30_000 }, async () => {
    const told: string[] = [];
    const { node, peer, nodeId, clientId } = await subscribedNode('catch-up:', '/caught', told);
    // A backend's listener in process, on a channel no session here subscribes to.
    const listened: number[] = [];
    node.server.subscribe('/listened/*', (message) => void listened.push(message.data as number));
    const other = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${port}`, prefix: 'catch-up:' }) });
    nodes.push(other);
    const itsSubscriber = (name: string): boolean => name === `perihelion:${nodeId}:sub`;
    // More channels than one read of a catch-up takes (500), each heard once before: the last one
    // is caught up too.
    const many = Array.from({ length: 510 }, (_, i) => `/many/${i}`);
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: many }, 10_000)).successful, true);
    for (const channel of many) await other.server.publish(channel, 'before');
    await waitFor(() => peer.received.filter((m) => String(m.channel).startsWith('/many/')).length === many.length, 5000, 'a message on each of the many channels');
    let seq = 0;
    for (; seq < 5; seq++) {
      await other.server.publish('/listened/x', seq);
      await other.server.publish('/caught', seq);
    }
    await waitFor(() => peer.received.filter((m) => m.channel === '/caught').length === 5, 3000, 'the first messages');
    // The node's subscriber connection cut, and its renewed SUBSCRIBE held 1 s: the other node
    // publishes on, every 50 ms, through the node's deafness and after.
    proxy!.holdUpstream = (chunk, name) => (itsSubscriber(name) && /subscribe/i.test(chunk.toString('latin1')) ? 1000 : 0);
    assert.ok(proxy!.inflict('reset', Math.random, itsSubscriber));
    const until = Date.now() + 2500;
    let first = true;
    while (Date.now() < until) {
      await other.server.publish('/listened/x', seq);
      await other.server.publish('/caught', seq++);
      if (first) await other.server.publish(many.at(-1)!, 'while deaf');
      first = false;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    proxy!.holdUpstream = null;
    const all = Array.from({ length: seq }, (_, n) => n);
    const got = (): number[] => peer.received.filter((m) => m.channel === '/caught').map((m) => m.data as number);
    await waitFor(() => got().length >= seq, 5000, () => `every message (got ${JSON.stringify(got())}; told: ${told.join(' | ')})`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(got(), all);
    await waitFor(() => listened.length >= seq, 3000, () => `the listener's messages (got ${JSON.stringify(listened)})`);
    assert.deepEqual(listened, all, 'the in-process listener too');
    assert.deepEqual(peer.received.filter((m) => m.channel === many.at(-1)).map((m) => m.data), ['before', 'while deaf']);
  });
});

describe('Presence across a Redis outage', () => {
  const own = ownRedis();

  /** A client of `t`, past its first connect; `ext` for its handshake. */
  async function client(t: TestServer, ext?: Record<string, unknown>): Promise<{ peer: WsPeer; clientId: string }> {
    const peer = await WsPeer.open(t.wsUrl);
    own.peers.push(peer);
    const clientId = (await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ...(ext ? { ext } : {}) })).clientId as string;
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    return { peer, clientId };
  }

  it("tells the other nodes' watchers, once Redis is back, who joined and left on a node while it was away, and its own watchers nothing twice", { timeout: 60_000 }, async () => {
    const url = `redis://127.0.0.1:${own.port}`;
    const restored = { a: 0, b: 0 };
    for (const name of ['a', 'b'] as const) {
      const t = await startServer({ engine: new RedisEngine({ url, prefix: 'presence-outage:', heartbeatInterval: 300, nodeTimeout: 5000, commandTimeout: 1000 }), presenceGrace: 0 });
      t.server.on('error', () => {});
      t.server.on('restored', () => restored[name]++);
      own.nodes.push(t);
    }
    const [a, b] = own.nodes as [TestServer, TestServer];
    const watcher = await client(b);
    assert.equal((await watcher.peer.request({ channel: '/meta/subscribe', clientId: watcher.clientId, subscription: '/presence/room' })).successful, true);
    // On the members' own node: a watcher as CometD's, one that tracks positions (the Perihelion
    // client's `skips`), and an in-process listener. They hear the outage's events as they come.
    const plainHere = await client(a);
    const trackingHere = await client(a, { skips: true });
    for (const here of [plainHere, trackingHere]) assert.equal((await here.peer.request({ channel: '/meta/subscribe', clientId: here.clientId, subscription: '/presence/room' })).successful, true);
    const listenedHere: PresenceData[] = [];
    a.server.subscribe('/presence/room', (message) => void listenedHere.push(message.data as PresenceData));
    const publishedHere: PresenceData[] = [];
    a.server.on('publish', (message) => void (message.channel === '/presence/room' && publishedHere.push(message.data as PresenceData)));
    const stays = await client(a);
    const goes = await client(a);
    assert.equal((await goes.peer.request({ channel: '/meta/subscribe', clientId: goes.clientId, subscription: '/room' })).successful, true);
    await watcher.peer.next((m) => m.channel === '/presence/room' && (m.data as PresenceData).clientId === goes.clientId, 'the join before the outage', 3000);

    own.redis!.kill('SIGKILL');
    await waitFor(() => a.server.engine.away?.() != null, 5000, 'node a to find Redis away');
    // While Redis is away: one member joins on a, another leaves; b's watcher cannot hear of it.
    assert.equal((await stays.peer.request({ channel: '/meta/subscribe', clientId: stays.clientId, subscription: '/room' })).successful, true);
    assert.equal((await goes.peer.request({ channel: '/meta/unsubscribe', clientId: goes.clientId, subscription: '/room' })).successful, true);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const named = (data: PresenceData): string => `${data.action} ${data.clientId === stays.clientId ? 'stays' : 'goes'}`;
    const heardBy = (peer: WsPeer): string[] => peer.received.filter((m) => m.channel === '/presence/room' && m.data !== undefined).map((m) => named(m.data as PresenceData));
    const heard = (): string[] => heardBy(watcher.peer);
    assert.deepEqual(heard(), ['join goes'], 'nothing of the outage reached the other node');
    const outage = ['join goes', 'join stays', 'leave goes'];
    for (const here of [plainHere, trackingHere]) assert.deepEqual(heardBy(here.peer), outage, "the node's own watchers hear the outage's events as they come");

    own.redis = await startRedis(own.port);
    await waitFor(() => restored.a > 0 && restored.b > 0, 15_000, 'both nodes to hear Redis again');
    await waitFor(() => heard().length === 3, 8000, () => `the events of the outage at b's watcher: ${heard().join(', ')}`);
    assert.deepEqual(heard(), outage);
    // Published again for b, not for a: a's watchers and listener heard each once, and the one that
    // tracks positions was given the positions the events took, without their data.
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.deepEqual(heardBy(plainHere.peer), outage, 'the plain watcher on the same node heard nothing twice');
    assert.deepEqual(heardBy(trackingHere.peer), outage, 'the watcher that tracks positions on the same node heard nothing twice');
    assert.deepEqual(listenedHere.map(named), outage, 'the in-process listener on the same node heard nothing twice');
    assert.deepEqual(publishedHere.map(named), outage, "the node's 'publish' event told each once");
    const skips = trackingHere.peer.received.filter((m) => m.channel === '/presence/room' && (m.ext as { skip?: boolean } | undefined)?.skip === true);
    assert.equal(skips.length, 2, 'the two events published again are skip notes for the watcher that tracks positions');
    for (const skip of skips) assert.ok((skip.ext as { position?: { offset?: number } }).position?.offset !== undefined, 'a skip note carries a position');
    assert.equal(plainHere.peer.received.filter((m) => m.channel === '/presence/room' && m.data === undefined).length, 0, 'no skip note for a watcher that does not track positions');
  });
});

interface PresenceData {
  action: 'join' | 'leave';
  clientId: string;
  user: string | null;
}
