/**
 * Hostile and broken input over real HTTP and real WebSockets: each case gets the right Bayeux
 * error or HTTP status, and the same server keeps serving a well-behaved client afterwards.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { WsPeer, at, browserFetch, errorOf, handshake, post, sessionRecord, startServer, waitFor, type Msg, type TestServer } from './helpers.js';


const HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling', 'websocket'] };
const MAX_BYTES = 4096;
const MAX_BATCH = 10;
const MAX_DEPTH = 8;

/** A refused message: unsuccessful, with an error of the given code. */
function assertRefused(message: Msg, code: number): { code: number; args: string[]; message: string } {
  assert.equal(message.successful, false, `not refused: ${JSON.stringify(message)}`);
  const error = errorOf(message);
  assert.equal(error.code, code, `expected ${code}, got ${String(message.error)}`);
  return error;
}

async function rawPost(url: string, body: string, contentType = 'application/json'): Promise<{ status: number; text: string }> {
  const response = await browserFetch(url, { method: 'POST', headers: { 'Content-Type': contentType }, body });
  return { status: response.status, text: await response.text() };
}

/** An HTTP error answer: the status, and a JSON array holding one unsuccessful message. */
function assertBatchError(response: { status: number; text: string }, status: number): Msg {
  assert.equal(response.status, status, `status ${response.status}: ${response.text}`);
  const body = JSON.parse(response.text) as unknown;
  assert.ok(Array.isArray(body), `body is not a JSON array: ${response.text}`);
  const [message] = body as Msg[];
  assert.ok(message);
  assert.equal(message.successful, false);
  assert.match(String(message.error), new RegExp(`^${status}:`));
  return message;
}

function connect(url: string, clientId: string, extra: Msg = {}): Promise<Msg[]> {
  return post(url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ...extra }]).then((r) => r.body);
}

async function connectedClient(url: string): Promise<string> {
  const clientId = await handshake(url);
  assert.equal((await connect(url, clientId))[0]?.successful, true);
  return clientId;
}

async function subscribe(url: string, clientId: string, subscription: string): Promise<Msg> {
  return at((await post(url, [{ channel: '/meta/subscribe', clientId, subscription }])).body, 0);
}

async function drain(url: string, clientId: string): Promise<Msg[]> {
  const body = await connect(url, clientId, { advice: { timeout: 0 } });
  assert.equal(at(body, 0).successful, true);
  return body.slice(1);
}

let roundTrips = 0;

/**
 * A well-behaved client end to end: handshake, first connect, subscribe, a held connect,
 * a publish from a second client, and the event arriving on the held connect.
 */
async function assertServes(ts: TestServer): Promise<void> {
  const channel = `/health/check${++roundTrips}`;
  const listener = await connectedClient(ts.url);
  assert.equal((await subscribe(ts.url, listener, channel)).successful, true);
  const held = connect(ts.url, listener);
  await waitFor(() => sessionRecord(ts.server, listener)?.holding === true, 2000, 'the connect to be held');
  const publisher = await handshake(ts.url);
  const ack = at((await post(ts.url, [{ channel, clientId: publisher, data: { ok: roundTrips }, id: 'rt' }])).body, 0);
  assert.equal(ack.successful, true);
  const body = await held;
  assert.equal(at(body, 0).successful, true);
  assert.deepEqual(
    body.slice(1).map((e) => [e.channel, e.data]),
    [[channel, { ok: roundTrips }]],
  );
}

describe('bad input over HTTP', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 3000, maxRequestBytes: MAX_BYTES, maxBatch: MAX_BATCH, maxDepth: MAX_DEPTH });
  });
  after(() => ts.close());

  it('answers malformed JSON with 400 and a JSON array carrying the error', async () => {
    for (const text of ['[{"channel":', '{oops}', '', '[1,]', '\u0000']) {
      assertBatchError(await rawPost(ts.url, text), 400);
    }
    await assertServes(ts);
  });

  it('answers a body that is neither an array nor an object with 400', async () => {
    for (const text of ['42', '"x"', 'null', 'true']) {
      assertBatchError(await rawPost(ts.url, text), 400);
    }
    await assertServes(ts);
  });

  it('answers a form body without a message parameter, or with a malformed one, with 400', async () => {
    assertBatchError(await rawPost(ts.url, 'foo=bar&messages=[]', 'application/x-www-form-urlencoded'), 400);
    assertBatchError(await rawPost(ts.url, 'message=%5B%7B', 'text/plain'), 400);
    assertBatchError(await rawPost(ts.url, 'message=42', 'application/x-www-form-urlencoded'), 400);
    await assertServes(ts);
  });

  it('refuses each non-object in a batch on its own and still handles the valid messages beside them', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/mixed/x')).successful, true);
    const { status, body } = await post(ts.url, [42, 'x', null, [{ channel: '/mixed/x' }], { channel: '/mixed/x', clientId, data: 'kept', id: 'ok' }]);
    assert.equal(status, 200);
    assert.equal(body.length, 5);
    for (let i = 0; i < 4; i++) {
      assertRefused(at(body, i), 400);
      assert.equal(typeof at(body, i).channel, 'string');
    }
    assert.equal(at(body, 4).successful, true);
    assert.equal(at(body, 4).id, 'ok');
    assert.deepEqual((await drain(ts.url, clientId)).map((e) => e.data), ['kept']);
    await assertServes(ts);
  });

  it('refuses a message without a channel with 400, echoing its id', async () => {
    const clientId = await handshake(ts.url);
    const { status, body } = await post(ts.url, [{ clientId, data: 'x', id: 'nochan' }, { channel: 42, clientId, id: 5 }]);
    assert.equal(status, 200);
    assert.deepEqual(assertRefused(at(body, 0), 400).args, ['channel']);
    assert.equal(at(body, 0).id, 'nochan');
    assert.deepEqual(assertRefused(at(body, 1), 400).args, ['channel']);
    assert.equal(at(body, 1).id, 5);
    await assertServes(ts);
  });

  it('refuses invalid channel names with 405, on publish and on subscribe', async () => {
    const clientId = await connectedClient(ts.url);
    for (const channel of ['/a//b', 'no-slash', '/a/*/b', '/a/**/b', '/', '/a/b/', '/a b/<script>']) {
      const published = at((await post(ts.url, [{ channel, clientId, data: 'x', id: 'p' }])).body, 0);
      assertRefused(published, 405);
      assert.equal(published.id, 'p');
      const subscribed = await subscribe(ts.url, clientId, channel);
      assertRefused(subscribed, 405);
      assert.equal(subscribed.subscription, channel);
    }
    assert.equal(ts.server.getSession(clientId)?.subscriptions.size, 0, 'an invalid channel was subscribed');
    await assertServes(ts);
  });

  it('refuses subscriptions to /meta/** and /meta/connect with 403', async () => {
    const clientId = await connectedClient(ts.url);
    for (const subscription of ['/meta/**', '/meta/*', '/meta/connect', '/meta/subscribe']) {
      const reply = await subscribe(ts.url, clientId, subscription);
      assert.deepEqual(assertRefused(reply, 403).args, [subscription]);
      assert.equal(reply.subscription, subscription);
    }
    // A list holding one meta channel is refused as a whole.
    const list = at((await post(ts.url, [{ channel: '/meta/subscribe', clientId, subscription: ['/fine', '/meta/**'] }])).body, 0);
    assertRefused(list, 403);
    await ts.server.publish('/fine', 'x');
    assert.deepEqual(await drain(ts.url, clientId), []);
    await assertServes(ts);
  });

  it('refuses messages on /meta/subscribe/x and /meta/foo with 403 and never subscribes', async () => {
    const victim = await connectedClient(ts.url);
    const { body } = await post(ts.url, [
      { channel: '/meta/subscribe/x', clientId: victim, subscription: '/secret/a', id: 'cve' },
      { channel: '/meta/subscribe/', clientId: victim, subscription: '/secret/b', id: 'slash' },
      { channel: '/meta/foo', clientId: victim, subscription: '/secret/c', id: 'foo' },
      { channel: '/meta', clientId: victim, subscription: '/secret/d', id: 'bare' },
    ]);
    assert.equal(body.length, 4);
    assertRefused(at(body, 0), 403);
    assert.equal(at(body, 0).id, 'cve');
    assertRefused(at(body, 2), 403);
    assertRefused(at(body, 3), 403);
    assert.equal(at(body, 1).successful, false);
    for (const channel of ['/secret/a', '/secret/b', '/secret/c', '/secret/d']) await ts.server.publish(channel, channel);
    assert.deepEqual(await drain(ts.url, victim), [], 'a /meta/subscribe/x message subscribed');
    await assertServes(ts);
  });

  it('never distributes data sent to /meta/connect', async () => {
    const watcher = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, watcher, '/**')).successful, true);
    const sender = await connectedClient(ts.url);
    const { body } = await post(ts.url, [{ channel: '/meta/connect', clientId: sender, data: { leaked: true }, id: 'pc' }]);
    const reply = at(body, 0);
    assert.equal(reply.id, 'pc');
    assertRefused(reply, 400);
    // With a connectionType it is an ordinary connect; the data still goes nowhere.
    const asConnect = await connect(ts.url, sender, { data: { leaked: true }, advice: { timeout: 0 } });
    assert.equal(at(asConnect, 0).successful, true);
    assert.equal(asConnect.length, 1);
    assert.deepEqual(await drain(ts.url, watcher), [], 'data on /meta/connect reached a /** subscriber');
    // The /** subscriber does receive ordinary publishes, so the check above can fail.
    await ts.server.publish('/any/thing', 1);
    assert.deepEqual((await drain(ts.url, watcher)).map((e) => e.channel), ['/any/thing']);
    await assertServes(ts);
  });

  it('refuses a publish to a wildcard pattern with 405', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/wild/*')).successful, true);
    for (const channel of ['/wild/*', '/wild/**', '/*', '/**']) {
      const reply = at((await post(ts.url, [{ channel, clientId, data: 'x' }])).body, 0);
      assert.deepEqual(assertRefused(reply, 405).args, [channel]);
    }
    assert.deepEqual(await drain(ts.url, clientId), []);
    await assertServes(ts);
  });

  it('refuses a publish without data with 400', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/nodata')).successful, true);
    const reply = at((await post(ts.url, [{ channel: '/nodata', clientId, id: 'nd' }])).body, 0);
    assert.deepEqual(assertRefused(reply, 400).args, ['data']);
    assert.equal(reply.id, 'nd');
    assert.equal(reply.clientId, clientId);
    assert.deepEqual(await drain(ts.url, clientId), []);
    // null is data.
    assert.equal(at((await post(ts.url, [{ channel: '/nodata', clientId, data: null }])).body, 0).successful, true);
    assert.deepEqual((await drain(ts.url, clientId)).map((e) => e.data), [null]);
    await assertServes(ts);
  });

  it('answers an unknown clientId with 402:<id>:Unknown client and advice to handshake', async () => {
    const unknown = 'nosuchclient0000000000000000';
    const { body } = await post(ts.url, [
      { channel: '/meta/connect', clientId: unknown, connectionType: 'long-polling', id: 'c' },
      { channel: '/meta/subscribe', clientId: unknown, subscription: '/u/x', id: 's' },
      { channel: '/meta/unsubscribe', clientId: unknown, subscription: '/u/x', id: 'u' },
      { channel: '/u/x', clientId: unknown, data: 'x', id: 'p' },
      { channel: '/meta/disconnect', clientId: unknown, id: 'd' },
    ]);
    assert.deepEqual(body.map((m) => m.id), ['c', 's', 'u', 'p', 'd']);
    for (const reply of body) {
      assert.equal(reply.successful, false);
      assert.match(String(reply.error), /^402:/);
      assert.deepEqual(errorOf(reply), { code: 402, args: [unknown], message: 'Unknown client' });
      assert.equal(reply.clientId, unknown);
      assert.equal((reply.advice as Msg | undefined)?.reconnect, 'handshake', `no handshake advice on ${String(reply.channel)}`);
    }
    await assertServes(ts);
  });

  it('answers a missing clientId with 401 and advice to handshake', async () => {
    const { body } = await post(ts.url, [
      { channel: '/meta/connect', connectionType: 'long-polling', id: 'c' },
      { channel: '/meta/subscribe', subscription: '/u/x', id: 's' },
      { channel: '/u/x', data: 'x', id: 'p' },
      { channel: '/meta/disconnect', id: 'd' },
    ]);
    assert.deepEqual(body.map((m) => m.id), ['c', 's', 'p', 'd']);
    for (const reply of body) {
      assertRefused(reply, 401);
      assert.equal(reply.clientId, undefined);
      assert.equal((reply.advice as Msg | undefined)?.reconnect, 'handshake');
    }
    await assertServes(ts);
  });

  it('refuses an oversized body announced by Content-Length with 413 before reading it', async () => {
    const response = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': String(50 * MAX_BYTES) } });
      req.on('error', reject);
      req.setTimeout(3000, () => {
        req.destroy();
        reject(new Error('no answer to the announced oversized body within 3 s'));
      });
      req.on('response', (res: IncomingMessage) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, text });
        });
      });
      // Only the headers: the answer must come without the body being sent.
      req.flushHeaders();
    });
    assertBatchError(response, 413);
    // The same size through fetch, body and all.
    assertBatchError(await rawPost(ts.url, JSON.stringify([{ channel: '/x', data: 'y'.repeat(2 * MAX_BYTES) }])), 413);
    await assertServes(ts);
  });

  it('refuses an oversized chunked body without Content-Length with 413 while it streams', async () => {
    const req = httpRequest(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' } });
    req.on('error', () => {});
    let answered: { status: number; text: string } | null = null;
    req.on('response', (res: IncomingMessage) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => (answered = { status: res.statusCode ?? 0, text }));
    });
    req.write('[{"channel":"/big","data":"');
    let sent = 0;
    // Keep streaming, well past the limit, until the server answers.
    while (answered === null && sent < 100 * MAX_BYTES && !req.destroyed) {
      req.write('z'.repeat(512));
      sent += 512;
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await waitFor(() => answered !== null, 3000, 'an answer to the chunked body');
    req.destroy();
    assert.ok(sent < 100 * MAX_BYTES, 'the server read far past its limit');
    assertBatchError(answered!, 413);
    await assertServes(ts);
  });

  it('refuses a batch of more than maxBatch messages with 413, as JSON and as form parameters', async () => {
    const clientId = await handshake(ts.url);
    const batch = Array.from({ length: MAX_BATCH + 1 }, (_, i) => ({ channel: '/many', clientId, data: i }));
    assertBatchError(await rawPost(ts.url, JSON.stringify(batch)), 413);
    const half = JSON.stringify(batch.slice(0, 6));
    const form = `message=${encodeURIComponent(half)}&message=${encodeURIComponent(half)}`;
    assertBatchError(await rawPost(ts.url, form, 'application/x-www-form-urlencoded'), 413);
    // Exactly maxBatch is fine.
    const { status, body } = await post(ts.url, batch.slice(0, MAX_BATCH));
    assert.equal(status, 200);
    assert.equal(body.length, MAX_BATCH);
    await assertServes(ts);
  });

  it('refuses JSON nested deeper than maxDepth with 400 and accepts it at the limit', async () => {
    const clientId = await connectedClient(ts.url);
    const nested = (levels: number): unknown => {
      let value: unknown = 'core';
      for (let i = 0; i < levels; i++) value = [value];
      return value;
    };
    // The message object is one level; its data adds the rest.
    const atLimit = await post(ts.url, [{ channel: '/deep', clientId, data: nested(MAX_DEPTH - 1) }]);
    assert.equal(at(atLimit.body, 0).successful, true);
    assertBatchError(await rawPost(ts.url, JSON.stringify([{ channel: '/deep', clientId, data: nested(MAX_DEPTH) }])), 400);
    assertBatchError(await rawPost(ts.url, '['.repeat(MAX_BYTES - 100)), 400);
    await assertServes(ts);
  });

  it('refuses fields of the wrong type with 400 naming the field', async () => {
    const clientId = await connectedClient(ts.url);
    const { body } = await post(ts.url, [
      { channel: '/meta/subscribe', clientId: 12345, subscription: '/t/x', id: 'cid' },
      { channel: '/t/x', clientId, data: 'x', ext: 'not-an-object', id: 'ext' },
      { channel: '/t/x', clientId, data: 'x', id: { nested: true } },
      { channel: '/meta/subscribe', clientId, subscription: 42, id: 'sub' },
      { channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: 'soon', id: 'adv' },
      { channel: '/meta/subscribe', clientId, subscription: [], id: 'empty' },
      { channel: '/meta/subscribe', clientId, subscription: ['/t/x', 7], id: 'mixed' },
    ]);
    assert.equal(body.length, 7);
    assert.deepEqual(assertRefused(at(body, 0), 400).args, ['clientId']);
    assert.equal(at(body, 0).id, 'cid');
    assert.deepEqual(assertRefused(at(body, 1), 400).args, ['ext']);
    assert.equal(at(body, 1).id, 'ext');
    assert.deepEqual(assertRefused(at(body, 2), 400).args, ['id']);
    assert.equal(at(body, 2).id, undefined, 'an object id was echoed');
    assert.deepEqual(assertRefused(at(body, 3), 400).args, ['subscription']);
    assert.equal(at(body, 3).subscription, 42);
    assert.deepEqual(assertRefused(at(body, 4), 400).args, ['advice']);
    assert.deepEqual(assertRefused(at(body, 5), 400).args, ['subscription']);
    assert.deepEqual(assertRefused(at(body, 6), 400).args, ['subscription']);
    // Bayeux §3.5: a refused message still gets the clientId it was sent with.
    for (const index of [1, 2, 3, 4, 5, 6]) assert.equal(at(body, index).clientId, clientId, `no clientId on reply ${index}`);
    await ts.server.publish('/t/x', 'x');
    assert.deepEqual(await drain(ts.url, clientId), [], 'a malformed message subscribed or published');
    await assertServes(ts);
  });
});

describe('bad input over WebSocket', () => {
  let ts: TestServer;
  const peers: WsPeer[] = [];
  const open = async (): Promise<WsPeer> => {
    const peer = await WsPeer.open(ts.wsUrl);
    peers.push(peer);
    return peer;
  };
  before(async () => {
    ts = await startServer({ timeout: 3000, maxRequestBytes: MAX_BYTES, maxBatch: MAX_BATCH, maxDepth: MAX_DEPTH });
  });
  after(async () => {
    await Promise.all(peers.map((p) => p.close()));
    await ts.close();
  });

  /** Handshake, connect and a publish to itself over one socket: the socket is usable. */
  async function assertUsable(peer: WsPeer): Promise<void> {
    const tag = `u${++roundTrips}`;
    peer.send([{ ...HANDSHAKE, id: `${tag}-h` }]);
    const hs = await peer.next((m) => m.id === `${tag}-h`, 'the handshake reply');
    assert.equal(hs.successful, true);
    const clientId = hs.clientId as string;
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: `${tag}-c` }]);
    peer.send([{ channel: '/meta/subscribe', clientId, subscription: `/ws/${tag}`, id: `${tag}-s` }]);
    peer.send([{ channel: `/ws/${tag}`, clientId, data: tag, id: `${tag}-p` }]);
    const event = await peer.next((m) => m.channel === `/ws/${tag}` && m.data === tag, 'the pushed event');
    assert.equal(event.clientId, undefined);
  }

  it('answers a malformed JSON frame with an error and keeps the socket open and usable', async () => {
    const peer = await open();
    peer.send('[{"channel":');
    const error = await peer.next((m) => m.successful === false, 'an error reply');
    assert.match(String(error.error), /^400:/);
    assert.ok(Array.isArray(peer.frames[0]), 'the error did not come as a JSON array');
    for (const text of ['42', 'null', '"x"']) peer.send(text);
    await waitFor(() => peer.received.filter((m) => m.successful === false).length === 4, 3000, 'an error per bad frame');
    assert.ok(peer.open);
    await assertUsable(peer);
  });

  it('refuses a binary frame with an error without processing it, and stays usable', async () => {
    const peer = await open();
    const sessions = ts.server.sessionCount;
    peer.ws.send(Buffer.from(JSON.stringify([{ ...HANDSHAKE, id: 'bin' }])), { binary: true });
    const error = await peer.next((m) => m.successful === false, 'an error reply');
    assert.match(String(error.error), /^400:/);
    assert.equal(peer.received.some((m) => m.id === 'bin'), false, 'the binary frame was processed');
    assert.equal(ts.server.sessionCount, sessions, 'the binary frame made a session');
    assert.ok(peer.open);
    await assertUsable(peer);
  });

  it('closes a socket that sends an oversized frame with 1009 and keeps serving other sockets', async () => {
    const bystander = await open();
    const offender = await open();
    const closed = once(offender.ws, 'close');
    offender.send(JSON.stringify([{ channel: '/big', data: 'x'.repeat(2 * MAX_BYTES) }]));
    const [code] = (await closed) as [number];
    assert.equal(code, 1009);
    await assertUsable(bystander);
    await assertServes(ts);
  });

  it('answers an empty [] frame with [] and keeps the socket open', async () => {
    const peer = await open();
    peer.send('[]');
    await waitFor(() => peer.frames.length === 1, 3000, 'an answer to []');
    assert.deepEqual(peer.frames[0], []);
    assert.ok(peer.open);
    await assertUsable(peer);
  });

  it('answers a frame of more than maxBatch messages or nested too deep with an error and stays usable', async () => {
    const peer = await open();
    peer.send(Array.from({ length: MAX_BATCH + 1 }, () => ({ channel: '/meta/handshake' })));
    const tooMany = await peer.next((m) => m.successful === false, 'an error for the batch');
    assert.match(String(tooMany.error), /^4\d\d:/);
    peer.send(`[{"channel":"/x","data":${'['.repeat(MAX_DEPTH + 2)}${']'.repeat(MAX_DEPTH + 2)}}]`);
    await waitFor(() => peer.received.filter((m) => m.successful === false).length === 2, 3000, 'an error for the nesting');
    assert.match(String(peer.received[1]?.error), /^400:/);
    await assertUsable(peer);
  });

  it('answers an unknown clientId over WebSocket with 402 and advice to handshake', async () => {
    const peer = await open();
    peer.send([{ channel: '/meta/connect', clientId: 'ghost', connectionType: 'websocket', id: 'g' }]);
    const reply = await peer.next((m) => m.id === 'g', 'the connect reply');
    assert.deepEqual(errorOf(reply), { code: 402, args: ['ghost'], message: 'Unknown client' });
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'handshake');
    await assertUsable(peer);
  });

  it('keeps the messages published after a socket drops with its connect held, for the next connect', async () => {
    const peer = await open();
    peer.send([{ ...HANDSHAKE, id: 'h' }]);
    const clientId = (await peer.next((m) => m.id === 'h', 'the handshake reply')).clientId as string;
    peer.send([
      { channel: '/meta/connect', clientId, connectionType: 'websocket', id: 'c1' },
      { channel: '/meta/subscribe', clientId, subscription: '/dropped/x', id: 's' },
    ]);
    await peer.next((m) => m.id === 's', 'the subscribe reply');
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: 'c2' }]);
    await waitFor(() => sessionRecord(ts.server, clientId)?.holding === true, 2000, 'the connect to be held');
    await peer.close();
    await ts.server.publish('/dropped/x', 'while away');
    // The client comes back on a new socket with the same clientId (a CometD or Faye reconnect).
    const again = await open();
    again.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 }, id: 'c3' }]);
    const reply = await again.next((m) => m.id === 'c3', 'the reconnect reply');
    assert.equal(reply.successful, true);
    const event = await again.next((m) => m.channel === '/dropped/x', 'the message published while the socket was down');
    assert.equal(event.data, 'while away');
  });

  it('pushes messages to a WebSocket carrying a clientId from an HTTP handshake', async () => {
    const clientId = await handshake(ts.url, ['websocket', 'long-polling']);
    const peer = await open();
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: '1' }]);
    const first = await peer.next((m) => m.id === '1', 'the first connect reply');
    assert.equal(first.successful, true);
    assert.equal(first.clientId, clientId);
    peer.send([{ channel: '/meta/subscribe', clientId, subscription: '/faye/room', id: '2' }]);
    assert.equal((await peer.next((m) => m.id === '2', 'the subscribe reply')).successful, true);
    // The next connect is held; events are pushed meanwhile.
    peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', id: '3' }]);
    await waitFor(() => sessionRecord(ts.server, clientId)?.holding === true, 2000, 'the connect to be held');
    const publisher = await handshake(ts.url);
    const ack = at((await post(ts.url, [{ channel: '/faye/room', clientId: publisher, data: { text: 'pushed' }, id: 'pub' }])).body, 0);
    assert.equal(ack.successful, true);
    const event = await peer.next((m) => m.channel === '/faye/room', 'the pushed event');
    assert.deepEqual(event.data, { text: 'pushed' });
    assert.equal(event.clientId, undefined);
    assert.equal(peer.received.some((m) => m.id === '3'), false, 'the held connect was answered with the push');
    await assertServes(ts);
  });
});

describe('one error per limit on every transport', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ jsonp: true, maxRequestBytes: MAX_BYTES, maxBatch: MAX_BATCH });
  });
  after(() => ts.close());

  const REQUEST_TOO_LARGE = /^413::Request too large: /;
  const BATCH_TOO_LARGE = /^413::Too many messages in one request: /;

  async function jsonpError(messages: unknown): Promise<string> {
    const response = await fetch(`${ts.url}?jsonp=cb&message=${encodeURIComponent(JSON.stringify(messages))}`);
    const [reply] = JSON.parse(/^\/\*\*\/cb\((.*)\);$/s.exec(await response.text())![1]!) as Msg[];
    return String(reply?.error);
  }

  it('a request past maxRequestBytes is requestTooLarge over long-polling and JSONP', async () => {
    const big = [{ channel: '/x', data: 'y'.repeat(2 * MAX_BYTES) }];
    assert.match(String(assertBatchError(await rawPost(ts.url, JSON.stringify(big)), 413).error), REQUEST_TOO_LARGE);
    assert.match(await jsonpError(big), REQUEST_TOO_LARGE);
  });

  it('more than maxBatch messages is batchTooLarge over long-polling, JSONP and WebSocket', async () => {
    const many = Array.from({ length: MAX_BATCH + 1 }, (_, i) => ({ channel: '/many', data: i }));
    assert.match(String(assertBatchError(await rawPost(ts.url, JSON.stringify(many)), 413).error), BATCH_TOO_LARGE);
    assert.match(await jsonpError(many), BATCH_TOO_LARGE);
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      peer.send(many);
      const reply = await peer.next((m) => m.successful === false, 'the error for the batch');
      assert.match(String(reply.error), BATCH_TOO_LARGE);
    } finally {
      await peer.close();
    }
  });
});

describe('a server whose engine never started', () => {
  it('answers each WebSocket frame with an error instead of dropping it and every later frame', async () => {
    // Only start() is reached: it fails, as a Redis engine does when Redis is not there.
    const engine = { name: 'broken', start: () => Promise.reject(new Error('the store is not there')), close: async () => {} } as unknown as NonNullable<Parameters<typeof startServer>[0]>['engine'];
    const ts = await startServer({ engine: engine! });
    ts.server.on('error', () => {});
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      for (const id of ['h1', 'h2']) {
        peer.send([{ ...HANDSHAKE, id }]);
        const reply = await peer.next((m) => m.successful === false && peer.received.filter((r) => r.successful === false).length === Number(id.slice(1)), `the error for frame ${id}`);
        assert.match(String(reply.error), /^500:/);
      }
    } finally {
      await peer.close();
      await ts.close().catch(() => {});
    }
  });
});
