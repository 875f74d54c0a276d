/**
 * No sticky sessions: two nodes on one Redis, and a client whose requests land on the node that
 * does not hold its session. Long-polling (a held connect, released by a publish on the owner,
 * and abandoned by its client), a WebSocket and an SSE stream opened on the other node, the
 * session binding checked on the owner, and an owner that is gone.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { RedisEngine, type ServerOptions } from '../src/index.js';
import { OWNER_CHECK_MS, decodeNodeMessage, encodeNodeMessage } from '../src/core/forwarding.js';
import { WsPeer, freePort, readText, sessionRecord, startServer, waitFor, type Msg, type TestServer } from './helpers.js';
import { REDIS_URL, deleteKeys, requireRedis, startRedis, uniquePrefix } from './redis-fixture.js';

async function post(url: string, batch: Msg[], headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Msg[]> {
  const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(batch), ...(signal ? { signal } : {}) });
  return (await response.json()) as Msg[];
}

describe('forwarding between nodes (no sticky sessions)', () => {
  let prefix = '';
  const nodes: TestServer[] = [];
  const peers: WsPeer[] = [];
  const pair = async (options: Partial<ServerOptions> = {}): Promise<[TestServer, TestServer]> => {
    prefix = uniquePrefix('forwarding');
    for (let i = 0; i < 2; i++) nodes.push(await startServer({ engine: new RedisEngine({ url: REDIS_URL, prefix }), timeout: 3000, ...options }));
    return [nodes[0]!, nodes[1]!];
  };
  const handshake = async (node: TestServer, headers: Record<string, string> = {}): Promise<string> => {
    const [reply] = await post(node.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling', 'websocket', 'eventsource'] }], headers);
    return reply!.clientId as string;
  };

  /** A session on A and an SSE stream for it opened on B, once its opening arrived. */
  const forwardedStream = async (a: TestServer, b: TestServer): Promise<{ clientId: string; text: () => string; ended: Promise<void> }> => {
    const clientId = await handshake(a);
    const response = await fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream' } });
    assert.equal(response.status, 200);
    let text = '';
    const ended = new Promise<void>((resolve) => readText(response.body!, (chunk) => (text += chunk), resolve));
    await waitFor(() => text.includes('event: connected'), 3000, 'the opening');
    return { clientId, text: () => text, ended };
  };

  before(requireRedis);
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
    await Promise.all(nodes.splice(0).map((t) => t.close()));
    if (prefix) await deleteKeys(prefix);
  });
  after(() => {});

  it('serves a long-polling client from either node: subscribe and a held connect on B, for a session on A', async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a);
    const [subscribed] = await post(b.url, [{ channel: '/meta/subscribe', clientId, subscription: '/room' }]);
    assert.equal(subscribed!.successful, true, JSON.stringify(subscribed));
    assert.ok(sessionRecord(a.server, clientId)?.subscriptions.has('/room'), 'the subscription is on the owner');
    assert.equal(b.server.getSession(clientId), undefined, 'the session did not move');
    await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    const held = post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    await a.server.publish('/room', 'from a');
    const replies = await held;
    assert.deepEqual(
      replies.map((m) => [m.channel, m.successful ?? m.data]),
      [
        ['/meta/connect', true],
        ['/room', 'from a'],
      ],
    );
  });

  it("looks up the node of a session once for its client's requests, and again once that node no longer knows it", async () => {
    const [a, b] = await pair();
    let lookups = 0;
    const engineB = b.server.engine as RedisEngine;
    const ownerOf = engineB.ownerOf.bind(engineB);
    engineB.ownerOf = (clientId) => (lookups++, ownerOf(clientId));
    const clientId = await handshake(a);
    assert.equal((await post(b.url, [{ channel: '/meta/subscribe', clientId, subscription: '/room' }]))[0]!.successful, true);
    for (let i = 0; i < 3; i++) {
      const [reply] = await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: { timeout: 0 } }]);
      assert.equal(reply!.successful, true, JSON.stringify(reply));
    }
    assert.equal(lookups, 1, 'one lookup for four requests');
    // The session ends on A: B's next request is answered 402 by A, and the one after looks again.
    await post(a.url, [{ channel: '/meta/disconnect', clientId }]);
    const [gone] = await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    assert.match(String(gone!.error), /^402:/);
    assert.equal(lookups, 1);
    const [again] = await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    assert.match(String(again!.error), /^402:/);
    assert.equal(lookups, 2, 'looked up again');
  });

  it('releases a held connect whose client left the other node, leaving the queued message for the next connect', async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a);
    await post(a.url, [{ channel: '/meta/subscribe', clientId, subscription: '/room' }]);
    await post(a.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    const abort = new AbortController();
    const held = post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }], {}, abort.signal).catch(() => 'aborted');
    await new Promise((resolve) => setTimeout(resolve, 200));
    abort.abort();
    assert.equal(await held, 'aborted');
    await new Promise((resolve) => setTimeout(resolve, 200));
    await a.server.publish('/room', 'kept');
    const replies = await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    assert.deepEqual(replies.filter((m) => m.channel === '/room').map((m) => m.data), ['kept'], 'the abandoned connect did not take it');
  });

  it('feeds a WebSocket opened on B for a session on A, and unbinds it when the socket closes', async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a);
    const peer = await WsPeer.open(b.wsUrl);
    peers.push(peer);
    const subscribed = await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/ws' });
    assert.equal(subscribed.successful, true);
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
    await a.server.publish('/ws', 1);
    await b.server.publish('/ws', 2);
    await waitFor(() => peer.received.filter((m) => m.channel === '/ws').length === 2, 3000, 'both messages over the socket on B');
    assert.deepEqual(peer.received.filter((m) => m.channel === '/ws').map((m) => m.data), [1, 2]);
    const record = sessionRecord(a.server, clientId)!;
    assert.equal(record.connection?.open, true, 'the owner writes to a line held by B');
    await peer.close();
    await waitFor(() => record.connection === null, 3000, 'the owner to unbind the line once the socket closed');
  });

  it('a message pushed to a WebSocket on B after B died is queued again on A for the next connect, in order', { timeout: 15_000 }, async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a);
    const peer = await WsPeer.open(b.wsUrl);
    peers.push(peer);
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/relayed' })).successful, true);
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
    await a.server.publish('/relayed', 1);
    await peer.next((m) => m.channel === '/relayed' && m.data === 1, 'the first message, through B');
    // B dies as far as Redis can tell (its subscription dropped): what A pushes to it reaches nobody.
    (b.server.engine as unknown as { connection: { sub: { disconnect(reconnect: boolean): void } } }).connection.sub.disconnect(false);
    await a.server.publish('/relayed', 2);
    await a.server.publish('/relayed', 3);
    const record = sessionRecord(a.server, clientId)!;
    await waitFor(() => record.connection === null, 3000, 'A to drop the line B held');
    // The client comes back on A (its balancer has only A left): nothing A pushed into the void is lost.
    const [reply, ...delivered] = await post(a.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: { timeout: 0 } }]);
    assert.equal(reply!.successful, true);
    assert.deepEqual(delivered.filter((m) => m.channel === '/relayed').map((m) => m.data), [2, 3]);
  });

  it('feeds an SSE stream opened on B for a session on A; another browser is refused by the owner', async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a, { Cookie: 'BAYEUX_BROWSER=browser-one-0123456789' });
    await post(a.url, [{ channel: '/meta/subscribe', clientId, subscription: '/sse' }], { Cookie: 'BAYEUX_BROWSER=browser-one-0123456789' });
    const other = await fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream', Cookie: 'BAYEUX_BROWSER=browser-two-0123456789' } });
    // Refused in the stream (an EventSource learns only from what its stream carries).
    assert.match(await other.text(), /"error":"402:/, "another browser's cookie does not speak for the session, on any node");
    const abort = new AbortController();
    const response = await fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream', Cookie: 'BAYEUX_BROWSER=browser-one-0123456789' }, signal: abort.signal });
    assert.equal(response.status, 200);
    let text = '';
    readText(response.body!, (chunk) => (text += chunk));
    await waitFor(() => text.includes('event: connected'), 3000, 'the opening');
    await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'eventsource' }], { Cookie: 'BAYEUX_BROWSER=browser-one-0123456789' });
    await a.server.publish('/sse', 'streamed');
    await waitFor(() => text.includes('"streamed"'), 3000, 'the message on the stream held by B');
    abort.abort();
  });

  it('answers 402 at once when the node Redis names as owner is not there', async () => {
    const [, b] = await pair();
    const redis = new Redis(REDIS_URL);
    await redis.hset(`${prefix}owner`, 'ghost-session', 'ghost-node');
    redis.disconnect();
    const started = Date.now();
    const [reply] = await post(b.url, [{ channel: '/meta/connect', clientId: 'ghost-session', connectionType: 'long-polling', id: '9' }]);
    assert.equal(reply!.successful, false);
    assert.match(String(reply!.error), /^402:/);
    assert.deepEqual([reply!.id, (reply!.advice as Msg).reconnect], ['9', 'handshake']);
    assert.ok(Date.now() - started < 1000, `answered in ${Date.now() - started} ms`);
  });

  it('answers a waiting forwarded request 402 soon after its owner stops listening (a killed node), not at the deadline', async () => {
    const [, b] = await pair();
    // A node that takes the request and then dies without a word: a subscriber on its channel, dropped.
    const owner = new Redis(REDIS_URL);
    await owner.subscribe(`${prefix}node:dying-node`);
    const redis = new Redis(REDIS_URL);
    await redis.hset(`${prefix}owner`, 'held-session', 'dying-node');
    redis.disconnect();
    const started = Date.now();
    const held = post(b.url, [{ channel: '/meta/connect', clientId: 'held-session', connectionType: 'long-polling', id: '7' }]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    owner.disconnect();
    const [reply] = await held;
    assert.match(String(reply!.error), /^402:/);
    assert.deepEqual([reply!.id, (reply!.advice as Msg).reconnect], ['7', 'handshake']);
    // The deadline would be timeout (3 s here) + 10 s; the owner is checked every OWNER_CHECK_MS.
    assert.ok(Date.now() - started < 300 + OWNER_CHECK_MS + 1000, `answered in ${Date.now() - started} ms`);
  });

  it("answers the connect held for a WebSocket on B 402 soon after the session's node stops listening (a killed node), not at the client's timeout", { timeout: 15_000 }, async () => {
    const [a, b] = await pair();
    const clientId = await handshake(a);
    const peer = await WsPeer.open(b.wsUrl);
    peers.push(peer);
    await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: 'held' }]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!peer.received.some((m) => m.id === 'held'), 'the connect is held on A');
    const started = Date.now();
    (a.server.engine as unknown as { connection: { sub: { disconnect(reconnect: boolean): void } } }).connection.sub.disconnect(false);
    const reply = await peer.next((m) => m.id === 'held', 'the held connect answered', OWNER_CHECK_MS * 2 + 1000);
    assert.match(String(reply.error), /^402:/);
    assert.deepEqual([reply.clientId, (reply.advice as Msg).reconnect], [clientId, 'handshake']);
    assert.ok(Date.now() - started < OWNER_CHECK_MS * 2 + 1000, `answered ${Date.now() - started} ms after its node went away`);
    assert.ok(peer.open, 'the socket stays open for the next session');
  });

  // Faye on EventSource, kicked by the server while its stream was on another node, handshook
  // again: the stream ended with nothing said, and EventSource reconnects by itself.
  it('ends an SSE stream on B whose session A ends for good with the reply a held connect gets (reconnect: none), as its last event', async () => {
    const [a, b] = await pair();
    const stream = await forwardedStream(a, b);
    const { clientId } = stream;
    a.server.getSession(clientId)!.disconnect();
    await Promise.race([stream.ended, new Promise((_, reject) => setTimeout(() => reject(new Error(`the stream did not end: ${stream.text()}`)), 3000))]);
    const text = stream.text();
    const last = text.trim().split('\n').filter((line) => line.startsWith('data: ') && line.includes('/meta/connect')).pop();
    assert.ok(last, `the stream ended without a word of its session's end: ${text}`);
    const [reply] = JSON.parse(last.slice('data: '.length)) as Msg[];
    assert.deepEqual([reply!.channel, reply!.clientId, (reply!.advice as { reconnect: string }).reconnect], ['/meta/connect', clientId, 'none'], text);
    const id = /^id: (.+)$/m.exec(text.slice(text.lastIndexOf('id: ')))?.[1];
    const again = await fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream', 'Last-Event-ID': id! } });
    assert.equal(again.status, 204, 'the EventSource that reconnects after it is told to stop');
  });

  it("counts an SSE stream on B for a session on A as one of its browser's lines on B (maxSessionsPerBrowser)", async () => {
    const [a, b] = await pair({ maxSessionsPerBrowser: 1 });
    const browser = { Cookie: 'BAYEUX_BROWSER=browser-one-0123456789', 'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0' };
    const [one, two] = [await handshake(a, browser), await handshake(a, browser)];
    const first = new AbortController();
    const open = (clientId: string, signal?: AbortSignal): Promise<Response> => fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream', ...browser }, ...(signal ? { signal } : {}) });
    const line = await open(one, first.signal);
    assert.equal(line.status, 200);
    const refused = await open(two);
    assert.equal(refused.status, 429, 'the second tab of the browser is refused on B as it would be on A');
    assert.match(((await refused.json()) as Array<{ error: string }>)[0]!.error, /^429::.*maxSessionsPerBrowser/);
    assert.equal(b.server.stats().pastBrowserLimit, 1);
    first.abort();
    // The line is given back once B sees the first stream closed.
    const second = new AbortController();
    const deadline = Date.now() + 3000;
    for (;;) {
      const response = await open(two, second.signal);
      if (response.status === 200) break;
      await response.body?.cancel();
      assert.ok(Date.now() < deadline, `still refused (${response.status}) after the first stream closed`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    second.abort();
  });

  // An EventSource that reconnects while its old line still looks open here (a proxy that went
  // silent): at the browser's limit its new stream must replace the old, not be refused.
  it("lets a session's new SSE stream on B replace its stream there at the browser's limit, and still counts one line", async () => {
    const [a, b] = await pair({ maxSessionsPerBrowser: 1 });
    const browser = { Cookie: 'BAYEUX_BROWSER=browser-one-0123456789', 'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0' };
    const [one, two] = [await handshake(a, browser), await handshake(a, browser)];
    await post(a.url, [{ channel: '/meta/subscribe', clientId: one, subscription: '/again' }], browser);
    const open = async (clientId: string): Promise<{ status: number; text: () => string; ended: Promise<void> }> => {
      const response = await fetch(`${b.url}/${clientId}`, { headers: { Accept: 'text/event-stream', ...browser } });
      let text = '';
      const ended = new Promise<void>((resolve) => readText(response.body!, (chunk) => (text += chunk), resolve));
      if (response.status === 200) await waitFor(() => text.includes('event: connected'), 3000, 'the opening');
      return { status: response.status, text: () => text, ended };
    };
    const first = await open(one);
    assert.equal(first.status, 200);
    const second = await open(one);
    assert.equal(second.status, 200, "the session's new stream is not refused");
    await Promise.race([first.ended, new Promise((_, reject) => setTimeout(() => reject(new Error('the old stream was not ended')), 3000))]);
    await a.server.publish('/again', 'to the new stream');
    await waitFor(() => second.text().includes('"to the new stream"'), 3000, 'the message on the new stream');
    assert.ok(!first.text().includes('"to the new stream"'));
    assert.equal((await open(two)).status, 429, 'the browser still holds its one line');
  });

  it('ends an SSE stream fed by a node that stops listening (a killed node), so that its client moves on', { timeout: 15_000 }, async () => {
    const [a, b] = await pair();
    const { ended } = await forwardedStream(a, b);
    // Node A goes deaf as a killed node does: Redis drops its subscription, and nothing is said.
    const started = Date.now();
    (a.server.engine as unknown as { connection: { sub: { disconnect(reconnect: boolean): void } } }).connection.sub.disconnect(false);
    await ended;
    assert.ok(Date.now() - started < OWNER_CHECK_MS * 2 + 1000, `the stream ended ${Date.now() - started} ms after its node went away`);
  });
});

describe('forwarding large replies (past Redis pub/sub output buffer bound)', () => {
  // A Redis of the test's own that cuts a subscriber once 1 MB waits for it (32 MB by default): the
  // replies below, sent through pub/sub, would make it cut node B off and B's clients would wait.
  let port = 0;
  let redis: ChildProcess | null = null;
  const nodes: TestServer[] = [];
  const peers: WsPeer[] = [];
  before(async () => {
    port = await freePort();
    redis = await startRedis(port, ['--client-output-buffer-limit', 'pubsub 1mb 1mb 0']);
  });
  after(async () => {
    await Promise.all(peers.map((peer) => peer.close()));
    await Promise.all(nodes.map((t) => t.close()));
    redis?.kill('SIGKILL');
  });

  it('a long-poll held on B and a WebSocket on B for sessions on A get messages of megabytes, whole and in order', { timeout: 20_000 }, async () => {
    const prefix = uniquePrefix('large-replies');
    const errors: unknown[] = [];
    for (let i = 0; i < 2; i++) {
      const node = await startServer({ engine: new RedisEngine({ url: `redis://127.0.0.1:${port}`, prefix }), timeout: 5000 });
      node.server.on('error', (error) => errors.push(error));
      nodes.push(node);
    }
    const [a, b] = nodes as [TestServer, TestServer];
    const big = (n: number): string => `${n}:${'x'.repeat(600_000)}`;
    // Long-polling: three clients whose sessions A holds, their connects held on B.
    const clients: string[] = [];
    for (let i = 0; i < 3; i++) {
      const [reply] = await post(a.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
      const clientId = reply!.clientId as string;
      await post(b.url, [{ channel: '/meta/subscribe', clientId, subscription: '/big' }]);
      await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
      clients.push(clientId);
    }
    const held = clients.map((clientId) => post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]));
    // A WebSocket on B for a fourth session on A.
    const [handshaken] = await post(a.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]);
    const socketClient = handshaken!.clientId as string;
    const peer = await WsPeer.open(b.wsUrl);
    peers.push(peer);
    assert.equal((await peer.request({ channel: '/meta/subscribe', clientId: socketClient, subscription: '/big' })).successful, true);
    await peer.request({ channel: '/meta/connect', clientId: socketClient, connectionType: 'websocket' });
    peer.send([{ channel: '/meta/connect', clientId: socketClient, connectionType: 'websocket' }]);
    // The connects reach A and are held there (as in the first test above).
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Three messages at once: the held connects are answered with one or more of them (up to 1.8
    // MB a reply), and their clients poll B again for the rest.
    await Promise.all([1, 2, 3].map((n) => a.server.publish('/big', big(n))));
    const pollUntilThree = async (clientId: string, first: Promise<Msg[]>): Promise<unknown[]> => {
      const got = (await first).filter((m) => m.channel === '/big').map((m) => m.data);
      while (got.length < 3) {
        const replies = await post(b.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
        assert.equal(replies[0]!.successful, true, JSON.stringify(replies[0]));
        got.push(...replies.filter((m) => m.channel === '/big').map((m) => m.data));
      }
      return got;
    };
    for (const got of await Promise.all(clients.map((clientId, i) => pollUntilThree(clientId, held[i]!)))) {
      assert.deepEqual(got, [big(1), big(2), big(3)]);
    }
    await waitFor(() => peer.received.filter((m) => m.channel === '/big').length === 3, 5000, 'the three messages over the socket on B');
    assert.deepEqual(peer.received.filter((m) => m.channel === '/big').map((m) => m.data), [big(1), big(2), big(3)]);
    // And B heard the bus all along: the next small message reaches the socket, nothing was reported.
    await a.server.publish('/big', 'small');
    await peer.next((m) => m.channel === '/big' && m.data === 'small', 'the next message');
    assert.deepEqual(errors, []);
    // Operators see the key path: A stored the large replies and pushes (B's requests landed on
    // the wrong node, a hint that affinity would help), B lost none.
    const metric = async (node: TestServer, name: string): Promise<number> => {
      const text = await (await fetch(`http://127.0.0.1:${node.address.port}/metrics`)).text();
      return Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    };
    assert.ok((await metric(a, 'perihelion_node_messages_stored_total')) >= 4, 'three long-poll replies and a push, at least');
    assert.equal(await metric(b, 'perihelion_node_messages_lost_total'), 0);
  });
});

describe('messages between nodes: replies and pushes one per line', () => {
  it('puts serialised messages after the header as they are, and reads them back', () => {
    const replies = ['{"channel":"/meta/connect","successful":true}', '{"channel":"/a","data":"quote \\" and \\\\n inside"}'];
    const encoded = encodeNodeMessage({ t: 'rep', id: 'x-1' }, replies);
    assert.equal(encoded, `{"t":"rep","id":"x-1"}\n${replies[0]}\n${replies[1]}`, 'not escaped again');
    assert.deepEqual(decodeNodeMessage(encoded), { t: 'rep', id: 'x-1', texts: replies });
    assert.deepEqual(decodeNodeMessage(encodeNodeMessage({ t: 'push', line: 'l-1' }, [])), { t: 'push', line: 'l-1', texts: [] });
    assert.deepEqual(decodeNodeMessage(encodeNodeMessage({ t: 'gone', id: 'x-2' })), { t: 'gone', id: 'x-2' });
  });

  it('keeps texts that lines cannot carry (empty, or with a raw newline) inside the JSON, and reads those back alike', () => {
    for (const texts of [['{"a":1}', ''], ['{"a":\n1}'], ['']]) {
      const encoded = encodeNodeMessage({ t: 'rep', id: 'x' }, texts);
      assert.ok(!encoded.includes('\n'), JSON.stringify(encoded));
      assert.deepEqual(decodeNodeMessage(encoded), { t: 'rep', id: 'x', texts });
    }
  });

  it('refuses what is not a message: not JSON, or JSON but not an object', () => {
    for (const payload of ['', 'nope', '{"t":"rep"', '[1,2]', 'null', '"rep"', 'nope\n{}', '42\n{}']) assert.equal(decodeNodeMessage(payload), null, JSON.stringify(payload));
  });
});
