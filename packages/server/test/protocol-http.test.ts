/**
 * Bayeux over long-polling, spoken raw with fetch against a real server on loopback: the
 * handshake, ids and clientIds on replies, held connects, session expiry, the HTTP framings
 * the CometD and Faye clients use, subscriptions, queue limits, CORS and methods.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { at, browserFetch, cookieFor, errorOf, handshake, post, sessionRecord, startServer, waitFor, WsPeer, type TestServer } from './helpers.js';

type Msg = Record<string, unknown>;

const HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] };

function connect(url: string, clientId: string, extra: Msg = {}): Promise<Msg[]> {
  return post(url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ...extra }]).then((r) => {
    assert.equal(r.status, 200);
    return r.body;
  });
}

/** A session that has made its first connect, so its next lone connect is held. */
async function connectedClient(url: string): Promise<string> {
  const clientId = await handshake(url);
  const [reply] = await connect(url, clientId);
  assert.equal(reply?.successful, true);
  return clientId;
}

async function subscribe(url: string, clientId: string, subscription: string | string[]): Promise<Msg> {
  const { body } = await post(url, [{ channel: '/meta/subscribe', clientId, subscription }]);
  return at(body, 0);
}

async function publish(url: string, clientId: string, channel: string, data: unknown): Promise<Msg> {
  const { body } = await post(url, [{ channel, clientId, data }]);
  return at(body, 0);
}

/** Drains what is queued for a session without waiting (advice.timeout 0). */
async function drain(url: string, clientId: string): Promise<Msg[]> {
  const body = await connect(url, clientId, { advice: { timeout: 0 } });
  assert.equal(at(body, 0).successful, true);
  return body.slice(1);
}

/** Whether `promise` settles within `ms`. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = promise.then(
    () => true,
    () => true,
  );
  const result = await Promise.race([settled, timeout]);
  clearTimeout(timer);
  return result;
}

async function rawPost(url: string, body: string, contentType: string): Promise<{ status: number; json: unknown }> {
  const response = await browserFetch(url, { method: 'POST', headers: { 'Content-Type': contentType }, body });
  return { status: response.status, json: JSON.parse(await response.text()) as unknown };
}

describe('/meta/handshake', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 4000, interval: 0 });
  });
  after(() => ts.close());

  it('answers with version, minimumVersion, supportedConnectionTypes, a clientId and complete advice', async () => {
    const { status, body, headers } = await post(ts.url, [{ ...HANDSHAKE, minimumVersion: '1.0', id: 'hs1' }]);
    assert.equal(status, 200);
    assert.match(headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(body.length, 1);
    const reply = at(body, 0);
    assert.equal(reply.channel, '/meta/handshake');
    assert.equal(reply.successful, true);
    assert.equal(reply.id, 'hs1');
    assert.equal(reply.version, '1.0');
    assert.equal(reply.minimumVersion, '1.0');
    assert.ok(Array.isArray(reply.supportedConnectionTypes));
    assert.ok((reply.supportedConnectionTypes as string[]).includes('long-polling'));
    assert.ok((reply.supportedConnectionTypes as string[]).includes('websocket'));
    assert.equal(typeof reply.clientId, 'string');
    assert.deepEqual(reply.advice, { reconnect: 'retry', interval: 0, timeout: 4000 });
    assert.equal(reply.error, undefined);
  });

  it('gives every session a distinct clientId of at least 128 bits', async () => {
    const ids = await Promise.all(Array.from({ length: 40 }, () => handshake(ts.url)));
    assert.equal(new Set(ids).size, ids.length, 'clientIds repeat');
    for (const id of ids) {
      // Base-36 digits carry log2(36) ≈ 5.17 bits each: 25 of them hold more than 128 bits.
      assert.match(id, /^[0-9a-z]+$/);
      assert.ok(id.length >= 25, `clientId ${id} is too short to hold 128 bits`);
    }
  });

  it('refuses a handshake without version, with advice reconnect none and no clientId', async () => {
    const before = ts.server.sessionCount;
    const { status, body } = await post(ts.url, [{ channel: '/meta/handshake', supportedConnectionTypes: ['long-polling'], id: 7 }]);
    assert.equal(status, 200);
    const reply = at(body, 0);
    assert.equal(reply.successful, false);
    assert.equal(reply.id, 7);
    assert.equal(reply.channel, '/meta/handshake');
    assert.deepEqual(errorOf(reply).args, ['version']);
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'none');
    assert.equal(reply.clientId, undefined);
    assert.equal(ts.server.sessionCount, before, 'a refused handshake made a session');
  });

  it('refuses a handshake without supportedConnectionTypes, with advice reconnect none', async () => {
    const before = ts.server.sessionCount;
    const { body } = await post(ts.url, [{ channel: '/meta/handshake', version: '1.0', id: 'no-types' }]);
    const reply = at(body, 0);
    assert.equal(reply.successful, false);
    assert.equal(reply.id, 'no-types');
    assert.deepEqual(errorOf(reply).args, ['supportedConnectionTypes']);
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'none');
    assert.equal(reply.clientId, undefined);
    assert.equal(ts.server.sessionCount, before, 'a refused handshake made a session');
  });

  it('refuses a handshake with no connection type in common, listing the types it offers', async () => {
    const before = ts.server.sessionCount;
    const { body } = await post(ts.url, [{ ...HANDSHAKE, supportedConnectionTypes: ['iframe', 'flash'], id: 'nt' }]);
    const reply = at(body, 0);
    assert.equal(reply.successful, false);
    assert.equal(reply.id, 'nt');
    const error = errorOf(reply);
    assert.equal(error.code, 301);
    assert.deepEqual(error.args, ['iframe', 'flash']);
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'none');
    assert.ok((reply.supportedConnectionTypes as string[]).includes('long-polling'));
    assert.equal(reply.clientId, undefined);
    assert.equal(ts.server.sessionCount, before);
  });

  it('ignores other messages sent in the same request as a handshake: not acted on, not answered (§4.1.1)', async () => {
    const other = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, other, '/hs/watched')).successful, true);
    const { status, body } = await post(ts.url, [
      { ...HANDSHAKE, id: 'h' },
      { channel: '/meta/subscribe', clientId: other, subscription: '/hs/sneaky', id: 's' },
      { channel: '/hs/watched', clientId: other, data: 'smuggled', id: 'p' },
      { channel: '/meta/disconnect', clientId: other, id: 'd' },
    ]);
    assert.equal(status, 200);
    assert.equal(body.length, 1, `the ignored messages were answered: ${JSON.stringify(body)}`);
    assert.equal(at(body, 0).successful, true);
    assert.equal(at(body, 0).id, 'h');
    assert.equal(typeof at(body, 0).clientId, 'string');
    // The disconnect was ignored: the session lives. The publish was ignored: nothing queued.
    assert.ok(ts.server.getSession(other), 'the batched disconnect ended the session');
    assert.deepEqual(await drain(ts.url, other), []);
    // The subscribe was ignored: a publish to that channel does not reach the session...
    await ts.server.publish('/hs/sneaky', 'x');
    assert.deepEqual(await drain(ts.url, other), []);
    // ...while the channel it did subscribe to still delivers.
    await ts.server.publish('/hs/watched', 'y');
    const events = await drain(ts.url, other);
    assert.deepEqual(events.map((e) => e.data), ['y']);
  });
});

describe('ids and clientIds on replies', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 4000 });
  });
  after(() => ts.close());

  it('echoes the id of every message, string or number, on success and failure', async () => {
    const hs = await post(ts.url, [{ ...HANDSHAKE, id: 1 }]);
    assert.equal(at(hs.body, 0).id, 1);
    const clientId = at(hs.body, 0).clientId as string;
    const first = await connect(ts.url, clientId, { id: 2 });
    assert.equal(at(first, 0).id, 2);
    const { body } = await post(ts.url, [
      { channel: '/meta/subscribe', clientId, subscription: '/ids/a', id: 'sub-3' },
      { channel: '/ids/a', clientId, data: 1, id: 4 },
      { channel: '/meta/subscribe', clientId, subscription: '/a//b', id: 'bad-5' },
      { channel: '/meta/foo', clientId, id: 6 },
      { channel: '/ids/*', clientId, data: 1, id: 'wild-7' },
      { channel: '/meta/unsubscribe', clientId, subscription: '/ids/a', id: 8 },
      { channel: '/meta/connect', clientId, connectionType: 'long-polling', id: '9' },
    ]);
    const replies = body.filter((m) => m.successful !== undefined);
    assert.deepEqual(
      replies.map((m) => m.id),
      ['sub-3', 4, 'bad-5', 6, 'wild-7', 8, '9'],
    );
    assert.deepEqual(
      replies.map((m) => m.successful),
      [true, true, false, false, false, true, true],
    );
    const bye = await post(ts.url, [{ channel: '/meta/disconnect', clientId, id: 10 }]);
    assert.equal(at(bye.body, 0).id, 10);
    const gone = await post(ts.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', id: 'late' }]);
    assert.equal(at(gone.body, 0).id, 'late');
    assert.equal(at(gone.body, 0).successful, false);
  });

  it('echoes the clientId on connect, subscribe, unsubscribe, publish and disconnect replies, failed ones too', async () => {
    const clientId = await handshake(ts.url);
    const { body } = await post(ts.url, [
      { channel: '/meta/connect', clientId, connectionType: 'long-polling' },
      { channel: '/meta/subscribe', clientId, subscription: '/cid/a' },
      { channel: '/meta/subscribe', clientId, subscription: '/meta/**' },
      { channel: '/meta/subscribe', clientId },
      { channel: '/cid/a', clientId, data: 'x' },
      { channel: '/cid/*', clientId, data: 'x' },
      { channel: '/cid/a', clientId },
      { channel: '/meta/unsubscribe', clientId, subscription: '/cid/a' },
      { channel: '/meta/unsubscribe', clientId, subscription: 'no-slash' },
      { channel: '/meta/connect', clientId, connectionType: 'carrier-pigeon' },
    ]);
    const replies = body.filter((m) => m.successful !== undefined);
    assert.equal(replies.length, 10);
    assert.deepEqual(
      replies.map((m) => m.successful),
      [true, true, false, false, true, false, false, true, false, false],
    );
    for (const reply of replies) assert.equal(reply.clientId, clientId, `no clientId on ${JSON.stringify(reply)}`);
    const bye = await post(ts.url, [{ channel: '/meta/disconnect', clientId }]);
    assert.equal(at(bye.body, 0).successful, true);
    assert.equal(at(bye.body, 0).clientId, clientId);
    // The session is gone now: the failed replies still name the clientId they were sent with.
    const { body: late } = await post(ts.url, [
      { channel: '/meta/connect', clientId, connectionType: 'long-polling' },
      { channel: '/meta/subscribe', clientId, subscription: '/cid/a' },
      { channel: '/meta/unsubscribe', clientId, subscription: '/cid/a' },
      { channel: '/cid/a', clientId, data: 'x' },
      { channel: '/meta/disconnect', clientId },
    ]);
    assert.equal(late.length, 5);
    for (const reply of late) {
      assert.equal(reply.successful, false);
      assert.equal(reply.clientId, clientId, `no clientId on ${JSON.stringify(reply)}`);
      assert.equal(errorOf(reply).code, 402);
    }
  });
});

describe('/meta/connect', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 10_000 });
  });
  after(() => ts.close());

  it('answers the first connect of a session at once, with advice', async () => {
    const clientId = await handshake(ts.url);
    const answer = connect(ts.url, clientId, { id: 'c1' });
    assert.equal(await settlesWithin(answer, 2000), true, 'the first connect was held');
    const reply = at(await answer, 0);
    assert.equal(reply.channel, '/meta/connect');
    assert.equal(reply.successful, true);
    assert.equal(reply.id, 'c1');
    assert.equal(reply.clientId, clientId);
    assert.deepEqual(reply.advice, { reconnect: 'retry', interval: 0, timeout: 10_000 });
  });

  it('holds a later lone connect until a message is published, then sends it after the reply in the same array', async () => {
    const listener = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, listener, '/held/news')).successful, true);
    const publisher = await handshake(ts.url);
    const held = connect(ts.url, listener, { id: 'held' });
    assert.equal(await settlesWithin(held, 200), false, 'the connect was answered before anything was published');
    const ack = await publish(ts.url, publisher, '/held/news', { text: 'hi' });
    assert.equal(ack.successful, true);
    const body = await held;
    assert.equal(body.length, 2, JSON.stringify(body));
    const [reply, event] = [at(body, 0), at(body, 1)];
    assert.equal(reply.channel, '/meta/connect', JSON.stringify(body));
    assert.equal(reply.channel, '/meta/connect');
    assert.equal(reply.successful, true);
    assert.equal(reply.id, 'held');
    assert.equal(event.channel, '/held/news');
    assert.deepEqual(event.data, { text: 'hi' });
    assert.equal(event.clientId, undefined, "the publisher's clientId leaked to a subscriber");
  });

  it('answers a held long-polling connect once the client speaks over a WebSocket (Faye moving over)', async () => {
    const clientId = await connectedClient(ts.url);
    const held = connect(ts.url, clientId, { id: 'lp' });
    assert.equal(await settlesWithin(held, 300), false, 'the connect was not held');
    const peer = await WsPeer.open(ts.url.replace(/^http/, 'ws'));
    try {
      const reply = await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/moving/over' });
      assert.equal(reply.successful, true, JSON.stringify(reply));
      assert.equal(await settlesWithin(held, 2000), true, 'the long-polling connect stayed held after the client spoke over its WebSocket');
      const [answer] = await held;
      assert.equal(answer?.successful, true);
      assert.equal(answer?.id, 'lp');
    } finally {
      await peer.close();
    }
  });

  it('answers at once when the client sends advice.timeout 0', async () => {
    const clientId = await connectedClient(ts.url);
    const reply = connect(ts.url, clientId, { advice: { timeout: 0 }, id: 'now' });
    assert.equal(await settlesWithin(reply, 2000), true, 'advice.timeout 0 was held');
    const body = await reply;
    assert.equal(body.length, 1);
    assert.equal(at(body, 0).successful, true);
    assert.equal(at(body, 0).id, 'now');
  });

  it('answers at once a connect that shares its request with other messages', async () => {
    const clientId = await connectedClient(ts.url);
    const request = post(ts.url, [
      { channel: '/meta/connect', clientId, connectionType: 'long-polling', id: 'c' },
      { channel: '/meta/subscribe', clientId, subscription: '/batched/x', id: 's' },
    ]);
    assert.equal(await settlesWithin(request, 2000), true, 'a batched connect was held');
    const { body } = await request;
    assert.deepEqual(
      body.map((m) => [m.id, m.successful]),
      [
        ['c', true],
        ['s', true],
      ],
    );
  });

  it('answers a held connect when its session disconnects, with advice reconnect none', async () => {
    const clientId = await connectedClient(ts.url);
    const held = connect(ts.url, clientId, { id: 'held' });
    await waitFor(() => sessionRecord(ts.server, clientId)?.holding === true, 2000, 'the connect to be held');
    const { body: bye } = await post(ts.url, [{ channel: '/meta/disconnect', clientId, id: 'bye' }]);
    assert.equal(at(bye, 0).successful, true);
    assert.equal(await settlesWithin(held, 2000), true, 'the held connect outlived its session');
    const reply = at(await held, 0);
    assert.equal(reply.id, 'held');
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'none');
  });

  it('keeps the messages of a held connect the client gave up on for its next connect', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/abandoned/x')).successful, true);
    const abort = new AbortController();
    const abandoned = browserFetch(ts.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify([{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]),
      signal: abort.signal,
    }).catch(() => null);
    await waitFor(() => sessionRecord(ts.server, clientId)?.holding === true, 2000, 'the connect to be held');
    abort.abort();
    await abandoned;
    await waitFor(() => sessionRecord(ts.server, clientId)?.holding === false, 2000, 'the server to let the connect go');
    await ts.server.publish('/abandoned/x', 'kept');
    assert.deepEqual((await drain(ts.url, clientId)).map((e) => e.data), ['kept']);
  });

  it('lets a second connect release the first at once (successful, empty) and holds the second', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/dup/x')).successful, true);
    const first = connect(ts.url, clientId, { id: 'first' });
    assert.equal(await settlesWithin(first, 150), false, 'the first connect was not held');
    const second = connect(ts.url, clientId, { id: 'second' });
    assert.equal(await settlesWithin(first, 2000), true, 'the second connect did not release the first');
    const firstBody = await first;
    assert.equal(firstBody.length, 1, 'the released connect carried events');
    assert.equal(at(firstBody, 0).successful, true);
    assert.equal(at(firstBody, 0).id, 'first');
    assert.equal(await settlesWithin(second, 200), false, 'the second connect was not held');
    await ts.server.publish('/dup/x', 'later');
    const secondBody = await second;
    assert.equal(at(secondBody, 0).id, 'second');
    assert.equal(at(secondBody, 0).successful, true);
    assert.deepEqual(
      secondBody.slice(1).map((e) => e.data),
      ['later'],
    );
  });
});

describe('/meta/connect held over long-polling, with outgoing extensions', () => {
  let ts: TestServer;
  const errors: unknown[] = [];
  before(async () => {
    ts = await startServer({ timeout: 10_000 });
    ts.server.on('error', (error) => errors.push(error));
    ts.server.addExtension({
      // Asynchronous: a held connect's reply waits for it before the response is written.
      outgoing: async (message) => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        if (message.channel === '/meta/connect' && message.id === 'boom') throw new Error('extension failed on a held connect');
        if (message.channel === '/meta/connect') return { ...message, ext: { ...message.ext, seen: true } };
        return message;
      },
    });
  });
  after(() => ts.close());

  it('answers a held connect, its reply passed through an asynchronous extension, with the message after it', async () => {
    const listener = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, listener, '/held/ext')).successful, true);
    const publisher = await handshake(ts.url);
    const held = connect(ts.url, listener, { id: 'held-ext' });
    assert.equal(await settlesWithin(held, 200), false, 'the connect was not held');
    assert.equal((await publish(ts.url, publisher, '/held/ext', { n: 1 })).successful, true);
    const body = await held;
    assert.equal(body.length, 2, JSON.stringify(body));
    assert.equal(at(body, 0).id, 'held-ext');
    assert.deepEqual(at(body, 0).ext, { seen: true }, 'the extension did not see the reply');
    assert.deepEqual(at(body, 1).data, { n: 1 });
  });

  it('answers a held connect whose reply an extension fails on with a serverError and its message, reports it, and keeps serving', async () => {
    const listener = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, listener, '/held/boom')).successful, true);
    const publisher = await handshake(ts.url);
    const held = connect(ts.url, listener, { id: 'boom' });
    assert.equal(await settlesWithin(held, 200), false, 'the connect was not held');
    const before = errors.length;
    assert.equal((await publish(ts.url, publisher, '/held/boom', { n: 2 })).successful, true);
    const [reply, event] = await held;
    assert.equal(reply?.channel, '/meta/connect');
    assert.equal(reply?.successful, false);
    assert.equal(reply?.id, 'boom');
    assert.match(String(reply?.error), /^500:/);
    assert.deepEqual(event?.data, { n: 2 }, 'the message the connect carried was lost');
    assert.equal(errors.length, before + 1, 'the failure was not reported');
    // The session and the server go on: the next connect is answered.
    const next = connect(ts.url, listener, { id: 'after', advice: { timeout: 0 } });
    assert.equal(at(await next, 0).successful, true);
  });
});

describe('/meta/connect held over long-polling, its client gone before the answer', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 10_000 });
  });
  after(() => ts.close());

  it('queues the messages the connect would have carried again, for the next connect', async () => {
    // A transport whose client is gone (its socket destroyed before the close was reported)
    // answers false: nothing was written, so nothing may be taken from the queue for good.
    const request = { headers: {}, remoteAddress: '127.0.0.1', url: '/', browserId: 'gone-client-browser-1' };
    let written = 0;
    const context = (answerLater?: (replies: string[]) => boolean) => ({ transport: 'long-polling' as const, request, ...(answerLater ? { answerLater } : {}) });
    const [hs] = (await ts.server.process([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], context())).map((r) => JSON.parse(r) as Msg);
    const clientId = String(hs?.clientId);
    await ts.server.process([{ channel: '/meta/subscribe', clientId, subscription: '/gone/news' }, { channel: '/meta/connect', clientId, connectionType: 'long-polling' }], context());
    await ts.server.process([{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }], context(() => (written++, false)));
    ts.server.publish('/gone/news', { n: 1 });
    await waitFor(() => written === 1, 2000, 'the held connect to be released');
    const next = await ts.server.process([{ channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: { timeout: 0 } }], context());
    const data = next.map((r) => JSON.parse(r) as Msg).filter((m) => m.channel === '/gone/news').map((m) => m.data);
    assert.deepEqual(data, [{ n: 1 }], 'the message the gone client never got was lost');
  });
});

describe('/meta/connect timeout and session expiry', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 300, maxInterval: 1000 });
  });
  after(() => ts.close());

  it('answers a held connect when the server timeout passes, with no events', async () => {
    const clientId = await connectedClient(ts.url);
    const started = Date.now();
    const body = await connect(ts.url, clientId, { id: 't' });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250, `answered after ${elapsed} ms, before the 300 ms timeout`);
    assert.ok(elapsed < 3000, `answered after ${elapsed} ms`);
    assert.equal(body.length, 1);
    assert.equal(at(body, 0).successful, true);
    assert.equal(at(body, 0).id, 't');
    assert.deepEqual(at(body, 0).advice, { reconnect: 'retry', interval: 0, timeout: 300 });
  });

  it("holds a connect its full timeout, counted from its own start, when an earlier connect's hold was cut short", async () => {
    // The session keeps one deadline for its held connects and moves it: the first hold's
    // deadline comes before the second's, and must not answer the second early.
    const listener = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, listener, '/timeout/early')).successful, true);
    const publisher = await handshake(ts.url);
    const first = connect(ts.url, listener, { id: 'first' });
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.equal((await publish(ts.url, publisher, '/timeout/early', { n: 1 })).successful, true);
    assert.equal((await first).length, 2, 'the first connect did not carry the message');
    const started = Date.now();
    const second = await connect(ts.url, listener, { id: 'second' });
    const elapsed = Date.now() - started;
    assert.equal(at(second, 0).id, 'second');
    assert.equal(second.length, 1, JSON.stringify(second));
    assert.ok(elapsed >= 280, `the second connect was answered after ${elapsed} ms, before its own 300 ms timeout`);
    assert.ok(elapsed < 3000, `answered after ${elapsed} ms`);
  });

  it('counts expiry from the latest connect, not the first: a session that connects again lives on', async () => {
    // maxInterval is 1000 ms here: connects 700 ms apart, each answered at once, keep the session
    // alive well past 1000 ms from the first.
    const clientId = await connectedClient(ts.url);
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 700));
      assert.ok(ts.server.getSession(clientId), `the session expired ${(i + 1) * 700} ms after its first connect while it kept connecting`);
      const body = await connect(ts.url, clientId, { advice: { timeout: 0 } });
      assert.equal(at(body, 0).successful, true);
    }
    await waitFor(() => ts.server.getSession(clientId) === undefined, 4000, 'the session to expire once it stopped connecting');
  });

  it('sweeps a session that stops connecting; its next connect gets 402 with advice to handshake', async () => {
    const idle = await connectedClient(ts.url);
    const active = await connectedClient(ts.url);
    let polling = true;
    const loop = (async () => {
      while (polling) {
        const body = await connect(ts.url, active);
        assert.equal(at(body, 0).successful, true, 'a session that kept connecting was swept');
      }
    })();
    try {
      await waitFor(() => ts.server.getSession(idle) === undefined, 4000, 'the idle session to be swept');
    } finally {
      polling = false;
      await loop;
    }
    assert.ok(ts.server.getSession(active), 'the connecting session was swept too');
    const body = await connect(ts.url, idle, { id: 'back' });
    const reply = at(body, 0);
    assert.equal(reply.successful, false);
    assert.equal(reply.id, 'back');
    assert.equal(reply.clientId, idle);
    assert.match(String(reply.error), /^402:/);
    assert.deepEqual(errorOf(reply), { code: 402, args: [idle], message: 'Unknown client' });
    assert.equal((reply.advice as Msg | undefined)?.reconnect, 'handshake');
  });

  it('sweeps a session that handshakes and never connects', async () => {
    const clientId = await handshake(ts.url);
    await waitFor(() => ts.server.getSession(clientId) === undefined, 4000, 'the session to be swept');
    const body = await connect(ts.url, clientId);
    assert.match(String(at(body, 0).error), /^402:/);
    assert.equal((at(body, 0).advice as Msg | undefined)?.reconnect, 'handshake');
  });
});

describe('HTTP framing', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 4000 });
  });
  after(() => ts.close());

  it('serves the CometD paths /handshake, /connect, /disconnect and / under the mount path', async () => {
    const hs = await post(`${ts.url}/handshake`, [{ ...HANDSHAKE, id: '1' }]);
    assert.equal(hs.status, 200);
    const clientId = at(hs.body, 0).clientId as string;
    assert.equal(typeof clientId, 'string');
    const connected = await post(`${ts.url}/connect`, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', id: '2' }]);
    assert.equal(at(connected.body, 0).successful, true);
    const subscribed = await post(`${ts.url}/`, [{ channel: '/meta/subscribe', clientId, subscription: '/paths/x', id: '3' }]);
    assert.equal(at(subscribed.body, 0).successful, true);
    const published = await post(`${ts.url}/`, [{ channel: '/paths/x', clientId, data: 'p', id: '4' }]);
    assert.equal(at(published.body, 0).successful, true);
    const delivered = await post(`${ts.url}/connect`, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', id: '5' }]);
    assert.deepEqual(delivered.body.slice(1).map((m) => m.data), ['p']);
    const bye = await post(`${ts.url}/disconnect`, [{ channel: '/meta/disconnect', clientId, id: '6' }]);
    assert.equal(at(bye.body, 0).successful, true);
    assert.equal(ts.server.getSession(clientId), undefined);
  });

  it('accepts a form-encoded message= body, as application/x-www-form-urlencoded and as text/plain', async () => {
    const form = `message=${encodeURIComponent(JSON.stringify([{ ...HANDSHAKE, id: 'f1' }]))}`;
    const hs = await rawPost(ts.url, form, 'application/x-www-form-urlencoded');
    assert.equal(hs.status, 200);
    const hsReply = (hs.json as Msg[])[0];
    assert.equal(hsReply?.successful, true);
    assert.equal(hsReply?.id, 'f1');
    const clientId = hsReply?.clientId as string;
    // Faye's cross-origin transport: message=<urlencoded JSON> with the browser's text/plain type.
    const batch = [
      { channel: '/meta/connect', clientId, connectionType: 'cross-origin-long-polling', id: 'f2' },
      { channel: '/meta/subscribe', clientId, subscription: '/form/x y', id: 'f3' },
      { channel: '/form/x y', clientId, data: 'a+b & c=d', id: 'f4' },
    ];
    const cors = await rawPost(ts.url, `message=${encodeURIComponent(JSON.stringify(batch))}`, 'text/plain;charset=UTF-8');
    assert.equal(cors.status, 200);
    const replies = cors.json as Msg[];
    assert.deepEqual(
      replies.map((m) => [m.id, m.successful]),
      [
        ['f2', true],
        ['f3', true],
        ['f4', true],
      ],
    );
    assert.equal(replies[1]?.subscription, '/form/x y');
    const events = await drain(ts.url, clientId);
    assert.deepEqual(events.map((e) => e.data), ['a+b & c=d'], 'form decoding damaged the data');
  });

  it('gives an answer carrying several messages beyond ASCII a Content-Length of the bytes it sends', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/utf8/x')).successful, true);
    const texts = ['café', '日本語のテキスト', '🚀 and 🌍', 'plain', 'ä'.repeat(300)];
    for (const text of texts) assert.equal((await publish(ts.url, clientId, '/utf8/x', text)).successful, true);
    // Messages wait, so this connect is answered at once with all of them, read here as raw bytes.
    const { length, bytes } = await new Promise<{ length: number; bytes: Buffer }>((resolve, reject) => {
      const body = JSON.stringify([{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
      const request = http.request(ts.url, { method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: cookieFor(ts.url) ?? '' } }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ length: Number(response.headers['content-length']), bytes: Buffer.concat(chunks) }));
        response.on('error', reject);
      });
      request.on('error', reject);
      request.end(body);
    });
    assert.equal(length, bytes.length, 'Content-Length is not the length of the body in bytes');
    const replies = JSON.parse(bytes.toString('utf8')) as Msg[];
    assert.equal(at(replies, 0).successful, true);
    assert.deepEqual(replies.slice(1).map((m) => m.data), texts);
  });

  it('answers an empty batch [] with 200 and []', async () => {
    const response = await rawPost(ts.url, '[]', 'application/json');
    assert.equal(response.status, 200);
    assert.deepEqual(response.json, []);
  });

  it('accepts a single message object and answers with an array', async () => {
    const response = await rawPost(ts.url, JSON.stringify({ ...HANDSHAKE, id: 'single' }), 'application/json');
    assert.equal(response.status, 200);
    assert.ok(Array.isArray(response.json));
    const [reply] = response.json as Msg[];
    assert.equal(reply?.successful, true);
    assert.equal(reply?.id, 'single');
  });
});

describe('subscriptions and delivery', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 4000, maxSubscriptions: 3 });
  });
  after(() => ts.close());

  it('echoes a list subscription as sent and delivers on every listed channel', async () => {
    const clientId = await connectedClient(ts.url);
    const list = ['/list/a', '/list/b/*'];
    const reply = await subscribe(ts.url, clientId, list);
    assert.equal(reply.successful, true);
    assert.deepEqual(reply.subscription, list);
    const single = await subscribe(ts.url, clientId, '/list/c');
    assert.equal(single.subscription, '/list/c');
    await ts.server.publish('/list/a', 1);
    await ts.server.publish('/list/b/deep', 2);
    await ts.server.publish('/list/c', 3);
    await ts.server.publish('/list/b', 'not matched by /list/b/*');
    const events = await drain(ts.url, clientId);
    assert.deepEqual(
      events.map((e) => [e.channel, e.data]),
      [
        ['/list/a', 1],
        ['/list/b/deep', 2],
        ['/list/c', 3],
      ],
    );
  });

  it('answers a subscribe to /service/x with success and records nothing', async () => {
    const clientId = await connectedClient(ts.url);
    const reply = await subscribe(ts.url, clientId, '/service/x');
    assert.equal(reply.successful, true);
    assert.equal(reply.subscription, '/service/x');
    const watcher = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, watcher, '/**')).successful, true);
    const other = await handshake(ts.url);
    assert.equal((await publish(ts.url, other, '/service/x', 'private')).successful, true);
    assert.deepEqual(await drain(ts.url, clientId), [], 'a /service message was broadcast');
    assert.deepEqual(await drain(ts.url, watcher), [], 'a /service message reached a /** subscriber');
    // Service subscriptions do not count against the limit of 3.
    assert.equal((await subscribe(ts.url, clientId, ['/service/a', '/service/b', '/service/c', '/s/1', '/s/2', '/s/3'])).successful, true);
  });

  it('stops delivering once a channel is unsubscribed', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/unsub/x')).successful, true);
    await ts.server.publish('/unsub/x', 'before');
    assert.deepEqual((await drain(ts.url, clientId)).map((e) => e.data), ['before']);
    const { body } = await post(ts.url, [{ channel: '/meta/unsubscribe', clientId, subscription: '/unsub/x', id: 'u' }]);
    assert.equal(at(body, 0).successful, true);
    assert.equal(at(body, 0).subscription, '/unsub/x');
    await ts.server.publish('/unsub/x', 'after');
    assert.deepEqual(await drain(ts.url, clientId), []);
  });

  it('refuses subscriptions beyond maxSubscriptions, counting each channel once', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, ['/max/a', '/max/b'])).successful, true);
    assert.equal((await subscribe(ts.url, clientId, ['/max/a', '/max/c'])).successful, true, 'a repeated channel was counted twice');
    const over = await subscribe(ts.url, clientId, '/max/d');
    assert.equal(over.successful, false);
    assert.equal(over.subscription, '/max/d');
    assert.equal(errorOf(over).code, 409);
    await ts.server.publish('/max/d', 'refused');
    assert.deepEqual(await drain(ts.url, clientId), [], 'the refused subscription delivers');
    const { body } = await post(ts.url, [{ channel: '/meta/unsubscribe', clientId, subscription: '/max/a' }]);
    assert.equal(at(body, 0).successful, true);
    assert.equal((await subscribe(ts.url, clientId, '/max/d')).successful, true, 'unsubscribing did not free a slot');
  });
});

describe('queue overflow', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startServer({ timeout: 4000, maxQueue: 3 });
  });
  after(() => ts.close());

  it('drops the oldest messages of a full queue and counts the drops in stats().queueDrops', async () => {
    const clientId = await connectedClient(ts.url);
    assert.equal((await subscribe(ts.url, clientId, '/q/x')).successful, true);
    const dropsBefore = ts.server.stats().queueDrops;
    for (let i = 1; i <= 5; i++) await ts.server.publish('/q/x', i);
    assert.equal(ts.server.stats().queueDrops - dropsBefore, 2);
    const body = await connect(ts.url, clientId);
    assert.equal(at(body, 0).successful, true);
    assert.deepEqual(body.slice(1).map((e) => e.data), [3, 4, 5]);
  });
});

describe('CORS and HTTP methods', () => {
  let ts: TestServer;
  const ALLOWED = 'http://app.example.com';
  before(async () => {
    ts = await startServer({ timeout: 4000, allowedOrigins: [ALLOWED] });
  });
  after(() => ts.close());

  it('answers a preflight from an allowed origin with that origin, credentials and the requested headers', async () => {
    const response = await browserFetch(ts.url, {
      method: 'OPTIONS',
      headers: { Origin: ALLOWED, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    });
    await response.arrayBuffer();
    assert.ok(response.status === 200 || response.status === 204, `status ${response.status}`);
    assert.equal(response.headers.get('access-control-allow-origin'), ALLOWED);
    assert.equal(response.headers.get('access-control-allow-credentials'), 'true');
    assert.match(response.headers.get('access-control-allow-methods') ?? '', /\bPOST\b/);
    assert.match(response.headers.get('access-control-allow-headers') ?? '', /content-type/i);
    const hs = await post(ts.url, [HANDSHAKE], { Origin: ALLOWED });
    assert.equal(hs.status, 200);
    assert.equal(at(hs.body, 0).successful, true);
    assert.equal(hs.headers.get('access-control-allow-origin'), ALLOWED);
    assert.equal(hs.headers.get('access-control-allow-credentials'), 'true');
  });

  it('refuses a preflight and a POST from an origin that is not allowed with 403', async () => {
    const before = ts.server.sessionCount;
    const preflight = await browserFetch(ts.url, {
      method: 'OPTIONS',
      headers: { Origin: 'http://evil.example.net', 'Access-Control-Request-Method': 'POST' },
    });
    await preflight.arrayBuffer();
    assert.equal(preflight.status, 403);
    assert.equal(preflight.headers.get('access-control-allow-origin'), null);
    const refused = await post(ts.url, [HANDSHAKE], { Origin: 'http://evil.example.net' });
    assert.equal(refused.status, 403);
    assert.equal(at(refused.body, 0).successful, false);
    assert.match(String(at(refused.body, 0).error), /^403:/);
    assert.equal(refused.headers.get('access-control-allow-origin'), null);
    assert.equal(ts.server.sessionCount, before, 'a refused origin made a session');
  });

  it('answers GET on the endpoint with 405 and a JSON body', async () => {
    const response = await browserFetch(ts.url);
    assert.equal(response.status, 405);
    assert.match(response.headers.get('allow') ?? '', /POST/);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    const body = JSON.parse(await response.text()) as Msg[];
    assert.ok(Array.isArray(body));
    assert.equal(body[0]?.successful, false);
    assert.equal(typeof body[0]?.error, 'string');
  });
});
