/**
 * Three `perihelion serve --redis` nodes behind a round-robin proxy with no affinity (the cluster
 * example): every request of a client may land on another node, and the nodes forward it to the
 * one that holds the session. Perihelion's client on each transport, CometD's and Faye's clients
 * receive everything published (by other clients, and through the HTTP API of other nodes)
 * exactly once; a client whose node is killed re-handshakes on another and recovers.
 *
 * Every scenario runs twice: on one Redis, and on a Redis Cluster of three shards that the test
 * starts (redis-server and redis-cli must be installed).
 *
 * Needs Redis at REDIS_URL (default redis://127.0.0.1:6379); fails saying so when it is absent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';
import { adapt } from 'cometd-nodejs-client';
import { AckExtension, CometD } from 'cometd';
import faye from 'faye';
import { startCluster } from '../cluster/start.mjs';
import { DEFAULT_REDIS_URL, deleteKeys, ownerOf, requireRedis } from '../cluster/redis.mjs';
import { startRedisCluster } from '../cluster/redis-cluster.mjs';

adapt();

const REDIS_URL = process.env.REDIS_URL ?? DEFAULT_REDIS_URL;
const PREFIX = `perihelion-test:cluster:${process.pid}:${randomBytes(4).toString('hex')}:`;
const RUN = randomBytes(3).toString('hex');
/** Messages each scenario publishes. */
const N = 30;
/** The header that names a test client on every HTTP request it makes, so the proxy's choices can be counted per client. */
const TAG = 'x-test-client';

/** Where the nodes keep their shared state: { url, redisCluster, stop() }. */
const STORES = [
  {
    name: 'one Redis',
    start: async () => {
      await requireRedis(REDIS_URL);
      return { url: REDIS_URL, redisCluster: false, stop: () => deleteKeys(REDIS_URL, PREFIX) };
    },
  },
  {
    name: 'a Redis Cluster of three shards',
    start: async () => {
      const local = await startRedisCluster();
      return { url: local.url, redisCluster: true, stop: () => local.stop() };
    },
  },
];

let store;
let cluster;
/** Per test client (its TAG), the requests the proxy sent to each node: Map<tag, Map<target, n>>. */
const perClient = new Map();
/** Per test client, the node its latest request went to. */
const lastTarget = new Map();

function countRequest(req, target) {
  const tag = req.headers[TAG];
  if (typeof tag !== 'string') return;
  const counts = perClient.get(tag) ?? new Map();
  perClient.set(tag, counts);
  counts.set(target, (counts.get(target) ?? 0) + 1);
  lastTarget.set(tag, target);
}

/** Asserts that the proxy sent some of `tag`'s requests to every node. */
function assertSpread(tag) {
  const counts = perClient.get(tag) ?? new Map();
  const shown = cluster.nodes.map((node) => `${node.url}: ${counts.get(node.url) ?? 0}`).join(', ');
  for (const node of cluster.nodes) assert.ok((counts.get(node.url) ?? 0) > 0, `the proxy sent none of ${tag}'s requests to ${node.url} (${shown})`);
}

/** A fetch that names its client on every request. */
function taggedFetch(tag) {
  return (input, init = {}) => {
    const headers = new Headers(init.headers);
    headers.set(TAG, tag);
    return fetch(input, { ...init, headers });
  };
}

/** A `ws` WebSocket that names its client on its upgrade. */
function taggedWebSocket(tag) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { [TAG]: tag } });
    }
  };
}

/**
 * A minimal EventSource for Node 20 (which has none), over fetch: named events, `onmessage`,
 * comments ignored, `onerror` when the stream fails or ends, no reconnection of its own (the
 * client closes a source that failed). As the `eventsource` package, it takes `fetch` from its init.
 */
function eventSourceOver(defaultFetch) {
  return class NodeEventSource extends EventTarget {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    readyState = 0;
    onopen = null;
    onmessage = null;
    onerror = null;
    #abort = new AbortController();

    constructor(url, init = {}) {
      super();
      this.url = url;
      this.withCredentials = init.withCredentials ?? false;
      this.#run(init.fetch ?? defaultFetch).catch(() => this.#fail());
    }

    async #run(fetcher) {
      const response = await fetcher(this.url, { headers: { Accept: 'text/event-stream' }, signal: this.#abort.signal, cache: 'no-store' });
      if (!response.ok || !response.body) {
        await response.body?.cancel();
        return this.#fail();
      }
      this.readyState = 1;
      this.onopen?.(new Event('open'));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      let type = '';
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return this.#fail();
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.search(/\r\n|\n|\r/)) !== -1) {
          const line = buffered.slice(0, end);
          buffered = buffered.slice(end + (buffered.startsWith('\r\n', end) ? 2 : 1));
          if (this.readyState === 2) return;
          if (line === '') {
            if (data.length > 0) this.#dispatch(type || 'message', data.join('\n'));
            type = '';
            data = [];
          } else if (!line.startsWith(':')) {
            const colon = line.indexOf(':');
            const field = colon === -1 ? line : line.slice(0, colon);
            const text = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') type = text;
            else if (field === 'data') data.push(text);
          }
        }
      }
    }

    #dispatch(type, data) {
      const event = new MessageEvent(type, { data });
      if (type === 'message') this.onmessage?.(event);
      this.dispatchEvent(event);
    }

    #fail() {
      if (this.readyState === 2) return;
      this.readyState = 2;
      this.onerror?.(new Event('error'));
    }

    close() {
      this.readyState = 2;
      this.#abort.abort();
    }
  };
}

/** A Perihelion client through the proxy on `transports`, all its requests tagged `tag`. */
function perihelionClient(tag, transports, options = {}) {
  const fetcher = taggedFetch(tag);
  return new Client(`${cluster.url}/bayeux`, {
    transports,
    fetch: fetcher,
    EventSource: eventSourceOver(fetcher),
    WebSocket: taggedWebSocket(tag),
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    ...options,
  });
}

/** POST /api/publish on `node` (not through the proxy). */
async function apiPublish(node, channel, data) {
  const response = await fetch(`${node.url}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${cluster.apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, `${node.url}/api/publish: ${response.status} ${body}`);
}

/** The node that holds session `clientId`, from the engine's owner hash in Redis. */
async function ownerNode(clientId) {
  const id = await ownerOf(store.url, PREFIX, clientId, store.redisCluster);
  const node = cluster.nodes.find((n) => n.nodeId === id);
  assert.ok(node, `Redis names ${JSON.stringify(id)} as the owner of ${clientId}, which is none of the nodes`);
  return node;
}

async function waitFor(what, predicate, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Every message of `sent` (their `seq`) arrived exactly once and in order; with positions
 * (Perihelion's client), their offsets are consecutive in one epoch.
 */
function assertExactlyOnce(label, received, count, { positions = false } = {}) {
  const seqs = received.map((r) => r.data?.seq);
  const expected = Array.from({ length: count }, (_, i) => i);
  const missing = expected.filter((seq) => !seqs.includes(seq));
  const duplicated = [...new Set(seqs.filter((seq, i) => seqs.indexOf(seq) !== i))];
  assert.deepEqual({ missing, duplicated }, { missing: [], duplicated: [] }, `${label}: messages lost or repeated`);
  assert.deepEqual(seqs, expected, `${label}: messages out of order`);
  if (!positions) return;
  const first = received[0].position;
  assert.ok(first && typeof first.offset === 'number', `${label}: ext.position on every message (got ${JSON.stringify(first)})`);
  received.forEach(({ position }, i) => {
    assert.equal(position?.epoch, first.epoch, `${label}: message ${i} is in another epoch`);
    assert.equal(position?.offset, first.offset + i, `${label}: offsets not consecutive at message ${i}`);
  });
}

/**
 * A third-party client (CometD with its AckExtension, or Faye) for the node-loss test: it records
 * every `seq` it receives, each session it handshakes (its clientId), and, for each of its
 * subscribes, the first seq published after the client had its confirmation (`subscribedAt`).
 */
function thirdPartyClient(kind, transport, channel, published) {
  const record = { name: `${kind} ${transport}`, seqs: [], sessions: [], subscribedAt: [], stop: async () => {} };
  const onData = (data) => {
    if (typeof data?.seq === 'number') record.seqs.push(data.seq);
  };
  if (kind === 'CometD') {
    const cometd = new CometD();
    cometd.unregisterTransport(transport === 'websocket' ? 'long-polling' : 'websocket');
    cometd.configure({ url: `${cluster.url}/bayeux`, logLevel: 'warn', backoffIncrement: 50, maxBackoff: 500 });
    cometd.registerExtension('ack', new AckExtension());
    // CometD forgets its subscriptions on every new handshake: the application subscribes in its
    // /meta/handshake listener, and again if that subscribe fails (it may meet the dead node once,
    // before the balancer skips it).
    const subscribe = () =>
      cometd.subscribe(channel, (message) => onData(message.data), (reply) => {
        if (reply.successful) record.subscribedAt.push(published.next);
        else if (!cometd.isDisconnected()) setTimeout(subscribe, 100);
      });
    cometd.addListener('/meta/handshake', (reply) => {
      if (!reply.successful) return;
      record.sessions.push(reply.clientId);
      subscribe();
    });
    cometd.handshake();
    record.stop = () => new Promise((resolve) => (cometd.isDisconnected() ? resolve() : cometd.disconnect(resolve)));
  } else {
    const client = new faye.Client(`${cluster.url}/bayeux`, { retry: 0.2, timeout: 5 });
    if (transport === 'long-polling') client.disable('websocket');
    // Faye subscribes again by itself after a new handshake.
    client.addExtension({
      incoming(message, next) {
        if (message.channel === '/meta/handshake' && message.successful) record.sessions.push(message.clientId);
        if (message.channel === '/meta/subscribe' && message.successful) record.subscribedAt.push(published.next);
        next(message);
      },
    });
    client.subscribe(channel, onData);
    record.stop = async () => client.disconnect();
  }
  return record;
}

/** Publishes seq 0…count-1 on `channel`: the even ones through `publisher` (a client), the odd ones through the HTTP API of the nodes in `apiNodes` in turn. */
async function publishAll(channel, count, publisher, apiNodes) {
  for (let seq = 0; seq < count; seq++) {
    if (seq % 2 === 0) await publisher(channel, { seq });
    else await apiPublish(apiNodes[(seq >> 1) % apiNodes.length], channel, { seq });
  }
}

for (const kind of STORES) {
  describe(`a cluster behind a round-robin proxy (no sticky sessions), on ${kind.name}`, { timeout: 80_000 }, () => {
    before(async () => {
      perClient.clear();
      lastTarget.clear();
      store = await kind.start();
      cluster = await startCluster({
        port: 0,
        nodes: 3,
        prefix: PREFIX,
        redis: store.url,
        redisCluster: store.redisCluster,
        demo: false,
        onRequest: countRequest,
      });
    });

    after(async () => {
      await cluster?.close();
      await store?.stop();
    });

    it('spreads requests over every node, one after the other', async () => {
      const before = cluster.proxy.counts().map((c) => c.requests);
      for (let i = 0; i < 6; i++) {
        const response = await fetch(`${cluster.url}/health`);
        assert.equal(response.status, 200);
        await response.body?.cancel();
      }
      assert.deepEqual(
        cluster.proxy.counts().map((c, i) => c.requests - before[i]),
        [2, 2, 2],
      );
    });

    for (const transport of ['long-polling', 'eventsource', 'http-streaming', 'websocket']) {
      it(`Perihelion client over ${transport}: every message exactly once, positions consecutive`, { timeout: 20_000 }, async () => {
        const channel = `/cluster/${RUN}/${transport}`;
        const tag = `perihelion-${transport}`;
        const subscriber = perihelionClient(tag, [transport]);
        const publisher = perihelionClient(`${tag}-publisher`, ['long-polling']);
        try {
          await subscriber.connect();
          assert.equal(subscriber.transport, transport);
          const received = [];
          await subscriber.subscribe(channel, (data, message) => received.push({ data, position: message.ext?.position }));
          // A few round trips while nothing else goes through the proxy: three of them in a row
          // land on three nodes, so all but one are forwarded to the session's node.
          for (let i = 0; i < 3; i++) assert.deepEqual(await subscriber.request('/service/echo', { i }), { i });
          const owner = await ownerNode(subscriber.clientId);
          const others = cluster.nodes.filter((node) => node !== owner);
          await publisher.connect();
          await publishAll(channel, N, (ch, data) => publisher.publish(ch, data), others);
          await waitFor(`${N} messages over ${transport}`, () => received.length >= N);
          await sleep(300); // time for a duplicate to show
          assertExactlyOnce(transport, received, N, { positions: true });
          assert.equal(subscriber.transport, transport, 'the client stayed on its transport');
          if (transport !== 'websocket') assertSpread(tag);
          else {
            // One socket is one upgrade: the echo requests went over it, to its own node.
            assertSpread(`${tag}-publisher`);
          }
        } finally {
          await Promise.allSettled([subscriber.disconnect(), publisher.disconnect()]);
        }
      });
    }

    it('Perihelion clients over WebSocket on each node receive what the others publish', { timeout: 20_000 }, async () => {
      const channel = `/cluster/${RUN}/websockets`;
      const clients = [0, 1, 2].map((i) => perihelionClient(`ws-${i}`, ['websocket']));
      try {
        const received = clients.map(() => []);
        // One after the other: consecutive upgrades go to consecutive nodes.
        for (const [i, client] of clients.entries()) {
          await client.connect();
          await client.subscribe(channel, (data, message) => received[i].push({ data, position: message.ext?.position }));
        }
        const owners = await Promise.all(clients.map((client) => ownerNode(client.clientId)));
        assert.equal(new Set(owners).size, 3, 'the three sockets landed on three nodes');
        await publishAll(channel, N, (ch, data) => clients[data.seq % 3].publish(ch, data), cluster.nodes);
        await waitFor(`${N} messages on each socket`, () => received.every((r) => r.length >= N));
        await sleep(300);
        received.forEach((r, i) => assertExactlyOnce(`socket ${i}`, r, N, { positions: true }));
      } finally {
        await Promise.allSettled(clients.map((client) => client.disconnect()));
      }
    });

    it('four CometD clients of one process (one cookie jar) handshaking and subscribing at once over long-polling: each on its first session, each gets everything', { timeout: 30_000 }, async () => {
      // cometd-nodejs-client keeps one cookie jar for its process: a script of its own, as users
      // run it. Its handshakes leave together without a cookie and land on different nodes; the
      // jar keeps the last cookie set, and a session refused for it would handshake again and
      // lose the subscription made outside a handshake listener.
      const channel = `/cluster/${RUN}/one-jar`;
      const script = new URL('../cluster/cometd-one-jar.mjs', import.meta.url);
      const child = spawn(process.execPath, [fileURLToPath(script), `${cluster.url}/bayeux`, channel, '4', '3'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let result;
      for await (const line of createInterface({ input: child.stdout })) {
        if (line === 'ready') for (let n = 0; n < 3; n++) await apiPublish(cluster.nodes[n % cluster.nodes.length], channel, n);
        else result = JSON.parse(line);
      }
      assert.deepEqual(result, Array.from({ length: 4 }, () => ({ handshakes: 1, received: [0, 1, 2] })));
    });

    it('CometD client over long-polling: every message exactly once', { timeout: 20_000 }, async () => {
      const channel = `/cluster/${RUN}/cometd`;
      const cometd = new CometD();
      cometd.unregisterTransport('websocket');
      cometd.configure({ url: `${cluster.url}/bayeux`, logLevel: 'warn' });
      const publisher = perihelionClient('cometd-publisher', ['long-polling']);
      try {
        await new Promise((resolve, reject) => cometd.handshake((reply) => (reply.successful ? resolve() : reject(new Error(`handshake failed: ${JSON.stringify(reply)}`)))));
        assert.equal(cometd.getTransport().type, 'long-polling');
        const received = [];
        await new Promise((resolve, reject) =>
          cometd.subscribe(
            channel,
            (message) => received.push({ data: message.data }),
            (reply) => (reply.successful ? resolve() : reject(new Error(`subscribe failed: ${JSON.stringify(reply)}`))),
          ),
        );
        const before = cluster.proxy.counts().map((c) => c.requests);
        // Half through a CometD publish, half through the API of each node in turn.
        const cometdPublish = (ch, data) =>
          new Promise((resolve, reject) => cometd.publish(ch, data, (reply) => (reply.successful ? resolve() : reject(new Error(`publish failed: ${JSON.stringify(reply)}`)))));
        await publishAll(channel, N, cometdPublish, cluster.nodes);
        await waitFor(`${N} messages to CometD`, () => received.length >= N);
        await sleep(300);
        assertExactlyOnce('CometD', received, N);
        const spread = cluster.proxy.counts().map((c, i) => c.requests - before[i]);
        assert.ok(spread.every((n) => n > 0), `CometD's requests reached every node (${spread.join(', ')})`);
      } finally {
        await new Promise((resolve) => (cometd.isDisconnected() ? resolve() : cometd.disconnect(resolve)));
        await publisher.disconnect().catch(() => {});
      }
    });

    for (const transport of ['websocket', 'long-polling']) {
      it(`Faye client over ${transport}: every message exactly once`, { timeout: 20_000 }, async () => {
        const channel = `/cluster/${RUN}/faye-${transport}`;
        const upgradesBefore = cluster.proxy.counts().reduce((sum, c) => sum + c.upgrades, 0);
        const client = new faye.Client(`${cluster.url}/bayeux`, { retry: 1 });
        if (transport === 'long-polling') client.disable('websocket');
        try {
          const received = [];
          await client.subscribe(channel, (data) => received.push({ data }));
          await publishAll(channel, N, (ch, data) => client.publish(ch, data), cluster.nodes);
          await waitFor(`${N} messages to Faye`, () => received.length >= N);
          await sleep(300);
          assertExactlyOnce(`Faye over ${transport}`, received, N);
          const upgrades = cluster.proxy.counts().reduce((sum, c) => sum + c.upgrades, 0) - upgradesBefore;
          if (transport === 'websocket') assert.ok(upgrades > 0, 'Faye moved to a WebSocket');
          else assert.equal(upgrades, 0, 'Faye stayed on long-polling');
        } finally {
          await client.disconnect();
        }
      });
    }

    it('CometD (with the ack extension) and Faye whose node is killed: every message published after their new subscribe, exactly once; what they missed in between is counted', { timeout: 90_000 }, async () => {
      const channel = `/cluster/${RUN}/failover-third-party`;
      const victim = cluster.nodes[0];
      const survivors = cluster.nodes.filter((node) => node !== victim);
      /** The next seq to be published (see thirdPartyClient). */
      const published = { next: 0 };
      const clients = [];
      try {
        // Each client on the victim's node: a client whose session landed elsewhere is replaced
        // (consecutive handshakes land on consecutive nodes).
        for (const [kind, transport] of [['CometD', 'long-polling'], ['CometD', 'websocket'], ['Faye', 'long-polling'], ['Faye', 'websocket']]) {
          for (let attempt = 0; ; attempt++) {
            const client = thirdPartyClient(kind, transport, channel, published);
            await waitFor(`${client.name} subscribed`, () => client.subscribedAt.length > 0);
            if ((await ownerNode(client.sessions[0])) === victim) {
              clients.push(client);
              break;
            }
            await client.stop();
            assert.ok(attempt < 6, `no session of ${client.name} landed on ${victim.url}`);
          }
        }
        // Every client subscribed, through whichever node: a probe reaches them all.
        for (let probe = -1; !clients.every((c) => c.seqs.some((seq) => seq < 0)); probe--) {
          await apiPublish(survivors[0], channel, { seq: probe });
          await sleep(50);
          assert.ok(probe > -200, 'every client received a probe');
        }
        for (const client of clients) client.seqs.length = 0;

        // Publish through the survivors; kill the node at seq KILL_AT, and go on until every client
        // has subscribed again and 50 messages more were published.
        const KILL_AT = 100;
        let moved = null;
        for (let seq = 0; moved === null || seq < moved + 50; seq++) {
          if (seq === KILL_AT) await victim.kill('SIGKILL');
          // Counted before the publish starts: a subscribe confirmed from now on precedes this publish.
          published.next = seq + 1;
          await apiPublish(survivors[seq % 2], channel, { seq });
          if (moved === null && seq >= KILL_AT && clients.every((c) => c.subscribedAt.length > 1)) moved = seq;
          assert.ok(seq < 3000, `every client subscribed again (${clients.map((c) => `${c.name}: ${c.subscribedAt.length} subscribes`).join(', ')})`);
          await sleep(10);
        }
        const total = published.next;
        const last = total - 1;
        await waitFor(`the last message at every client`, () => clients.every((c) => c.seqs.includes(last)), 30_000);
        await sleep(300); // time for a duplicate to show

        for (const client of clients) {
          const resubscribed = client.subscribedAt.at(-1);
          const after = client.seqs.filter((seq) => seq >= resubscribed);
          const expected = Array.from({ length: total - resubscribed }, (_, i) => resubscribed + i);
          const lost = Array.from({ length: resubscribed }, (_, i) => i).filter((seq) => !client.seqs.includes(seq));
          const duplicates = client.seqs.length - new Set(client.seqs).size;
          console.log(`# ${client.name}: node killed at message ${KILL_AT}, subscribed again at ${resubscribed}, lost ${lost.length} (${lost[0] ?? '-'}…${lost.at(-1) ?? '-'}), ${duplicates} duplicates, ${total} published`);
          assert.equal(client.sessions.length, 2, `${client.name}: one new session (${client.sessions.join(', ')})`);
          assert.notEqual(await ownerNode(client.sessions[1]), victim, `${client.name}: its new session is on a live node`);
          assert.deepEqual(after, expected, `${client.name}: everything published after its new subscribe, once, in order`);
          assert.equal(duplicates, 0, `${client.name}: nothing twice`);
          // Lost: at most what the dead node held for it, and what was published before its new subscribe.
          assert.ok(lost.every((seq) => seq >= KILL_AT - 40), `${client.name}: nothing lost from well before the kill (lost ${lost.join(', ')})`);
        }
      } finally {
        await Promise.allSettled(clients.map((client) => client.stop()));
        await victim.restart();
      }
    });

    // Over eventsource the stream usually lands on another node than the session (round robin):
    // that node ends the stream when the session's node stops listening, and the client moves on.
    for (const transport of ['long-polling', 'websocket', 'eventsource']) {
      it(`failover over ${transport}: the session's node is killed, the client re-handshakes and recovers every message`, { timeout: 40_000 }, async () => {
        const channel = `/cluster/${RUN}/failover-${transport}`;
        const tag = `failover-${transport}`;
        const subscriber = perihelionClient(tag, [transport]);
        const count = 120;
        let owner;
        try {
          await subscriber.connect();
          const received = [];
          const recoveries = [];
          subscriber.on('recovery', (event) => recoveries.push(event));
          await subscriber.subscribe(channel, (data, message) => received.push({ data, position: message.ext?.position }));
          const firstSession = subscriber.clientId;
          owner = await ownerNode(firstSession);
          const survivors = cluster.nodes.filter((node) => node !== owner);
          if (transport === 'long-polling') {
            // The hard case: the held connect sits on another node, forwarded to the owner, and that
            // node must notice the owner's death. Each message releases it and the next goes to the next node.
            // (At least one: only then is the held connect surely the client's latest request.)
            for (let seq = -1; seq === -1 || lastTarget.get(tag) === owner.url; seq--) {
              const before = received.length;
              await apiPublish(survivors[0], channel, { seq });
              await waitFor('the warm-up message', () => received.length > before);
              await sleep(100);
            }
            received.length = 0;
          }
          const started = Date.now();
          let killedAt = 0;
          for (let seq = 0; seq < count; seq++) {
            if (seq === 40) {
              await owner.kill('SIGKILL');
              killedAt = Date.now();
            }
            await apiPublish(survivors[seq % 2], channel, { seq });
            await sleep(10);
          }
          await waitFor(`all ${count} messages after the failover`, () => received.length >= count, 25_000);
          const recoveredAfter = Date.now() - killedAt;
          await sleep(300);
          assertExactlyOnce(`failover over ${transport}`, received, count, { positions: true });
          assert.notEqual(subscriber.clientId, firstSession, 'the client has a new session');
          assert.notEqual((await ownerNode(subscriber.clientId)).nodeId, owner.nodeId);
          assert.ok(recoveries.some((event) => event.recovered === true), `the client recovered (${JSON.stringify(recoveries)})`);
          const dead = cluster.proxy.counts().find((c) => c.target === owner.url);
          assert.ok(dead.errors > 0 || transport === 'websocket', 'the proxy answered 502 for the dead node');
          console.log(`# failover over ${transport}: all ${count} messages within ${recoveredAfter} ms of the kill (test ${Date.now() - started} ms)`);
        } finally {
          await subscriber.disconnect().catch(() => {});
          await owner?.restart?.();
        }
      });
    }
  });
}
