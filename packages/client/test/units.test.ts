/** Pure parts of the client: backoff, error parsing, option checks, what a subscription's resync reports. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { backoff } from '../src/backoff.js';
import { Http } from '../src/transports/transport.js';
import { Client, ClientError, byType, type Message } from '../src/index.js';
import type { ResolvedOptions } from '../src/options.js';
import type { Outbox } from '../src/outbox.js';
import { Subscriptions } from '../src/subscriptions.js';

describe('backoff', () => {
  it('grows exponentially up to the maximum, with full jitter', () => {
    assert.equal(backoff(0, 500, 20_000, 0, () => 0.999_999), 499);
    assert.equal(backoff(3, 500, 20_000, 0, () => 0.999_999), 3999);
    assert.equal(backoff(10, 500, 20_000, 0, () => 0.999_999), 19_999, 'capped by the maximum');
    assert.equal(backoff(100, 500, 20_000, 0, () => 0.5), 10_000, 'no overflow on long outages');
    assert.equal(backoff(5, 500, 20_000, 0, () => 0), 0, 'jitter reaches zero');
  });

  it('never goes under the server’s advice.interval', () => {
    assert.equal(backoff(0, 500, 20_000, 2000, () => 0.1), 2000);
  });
});

describe('errors and options', () => {
  it('parses the server’s error string', () => {
    const error = ClientError.fromReply({ channel: '/a', error: '403:/a:Forbidden channel' });
    assert.equal(error.code, 'bayeux');
    assert.equal(error.bayeuxCode, 403);
    assert.equal(error.bayeux, '403:/a:Forbidden channel');
    assert.match(error.message, /\/a: Forbidden channel/);
  });

  it('refuses contradictory or malformed options at construction', () => {
    assert.throws(() => new Client('http://x/bayeux', { timeout: -1 }), /timeout/);
    assert.throws(() => new Client('http://x/bayeux', { lineTimeout: -1 }), /lineTimeout/);
    assert.throws(() => new Client('http://x/bayeux', { transports: [] }), /transports/);
  });

  it('refuses an unknown option with the list of known ones, and a value of the wrong kind, saying what it takes', () => {
    assert.throws(() => new Client('http://x/bayeux', { timout: 5000 } as never), /^TypeError: unknown option "timout"; known options are: transports, timeout, lineTimeout/);
    assert.throws(() => new Client('http://x/bayeux', { timeout: '5s' } as never), /option "timeout" must be a number ≥ 0, got "5s"/);
    assert.throws(() => new Client('http://x/bayeux', { openTimeout: Infinity }), /option "openTimeout" must be a number ≥ 0, got Infinity/);
    assert.throws(() => new Client('http://x/bayeux', { maxReconnectDelay: 2 ** 31 }), /option "maxReconnectDelay" must be a number ≥ 0, got 2147483648/);
    assert.throws(() => new Client('http://x/bayeux', { transports: ['websockets'] } as never), /option "transports" must be a non-empty list of connection types, got \["websockets"\]/);
    assert.throws(() => new Client('http://x/bayeux', { shared: 'yes' } as never), /option "shared" must be true or false/);
    assert.throws(() => new Client('http://x/bayeux', { headers: 'X-N: 1' } as never), /option "headers" must be an object/);
    assert.throws(() => new Client('http://x/bayeux', { worker: true } as never), /option "worker" must be a script URL or false/);
    assert.throws(() => new Client('http://x/bayeux', { token: 42 } as never), /option "token" must be a string or a function, got 42/);
    assert.throws(() => new Client('http://x/bayeux', { WebSocket: 'ws' } as never), /option "WebSocket" must be a function/);
    assert.doesNotThrow(() => new Client('http://x/bayeux', { token: () => 't', worker: false, shared: false, autoConnect: false, headers: {} }));
  });

  it('stops with no-transport when the environment can use none of the listed types', async () => {
    const c = new Client('http://127.0.0.1:1/bayeux', { transports: ['eventsource'], shared: false });
    await assert.rejects(c.connect(), (error: ClientError) => error.code === 'no-transport');
  });

  it('fails a subscribe, publish or request whose automatic connect finds no usable transport, rather than leaving it pending', async () => {
    const noTransport = (error: ClientError): boolean => error.code === 'no-transport';
    const settled = <T>(promise: Promise<T>): Promise<T> =>
      Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('still pending after 1 s')), 1000))]);
    const c = new Client('http://127.0.0.1:1/bayeux', { transports: ['eventsource'], shared: false });
    await assert.rejects(settled(c.subscribe('/t', () => {})), noTransport);
    await assert.rejects(settled(c.publish('/t', 1)), noTransport);
    await assert.rejects(settled(c.request('/service/t', {})), noTransport);
    assert.equal(c.state, 'disconnected');
  });

  it('disconnect() on a client never started fails what waits for its connection with disconnected', async () => {
    const c = new Client('http://127.0.0.1:1/bayeux', { autoConnect: false, shared: false });
    const publish = c.publish('/t', 1);
    const subscribe = c.subscribe('/t', () => {});
    await c.disconnect();
    const disconnected = (error: ClientError): boolean => error.code === 'disconnected';
    await assert.rejects(publish, disconnected);
    await assert.rejects(subscribe, disconnected);
  });
});

describe('HTTP outside browsers', () => {
  it("sends the application's own Cookie header along with the cookies the server set", async () => {
    const sent: Array<string | undefined> = [];
    const fetchFn = (async (_url: string, init: RequestInit) => {
      sent.push((init.headers as Record<string, string>).Cookie);
      return new Response('[]', { headers: { 'Set-Cookie': 'BAYEUX_BROWSER=b1; Path=/; HttpOnly' } });
    }) as typeof fetch;
    const http = new Http(fetchFn, false, { Cookie: 'sid=app-login' });
    await http.request('http://x/bayeux', { method: 'POST' });
    await http.request('http://x/bayeux', { method: 'POST' });
    assert.deepEqual(sent, ['sid=app-login', 'sid=app-login; BAYEUX_BROWSER=b1']);
  });
});

describe('byType', () => {
  it('calls the handler of each event type, and gives anything else to the fallback', () => {
    const seen: string[] = [];
    const handler = byType(
      {
        shipped: (event) => seen.push(`shipped ${String(event.order)}`),
        cancelled: (event, message) => seen.push(`cancelled on ${message.channel}`),
      },
      (data) => seen.push(`other ${JSON.stringify(data)}`),
    );
    const message = (data: unknown): Message => ({ channel: '/orders', data });
    for (const data of [{ type: 'shipped', order: 7 }, { type: 'cancelled' }, { type: 'unknown' }, { type: 'constructor' }, 'text', null, { type: 3 }]) {
      handler(data as never, message(data));
    }
    assert.deepEqual(seen, ['shipped 7', 'cancelled on /orders', 'other {"type":"unknown"}', 'other {"type":"constructor"}', 'other "text"', 'other null', 'other {"type":3}']);
    // Without a fallback, unknown events are ignored: an older page meets a newer server's events.
    assert.doesNotThrow(() => byType({})({ type: 'new' } as never, message({ type: 'new' })));
  });
});

describe('subscriptions: what a resync reports', () => {
  /** A registry on a connected session, its subscribes answered by the test. */
  function registry(): { subs: Subscriptions; sent: { message: Message; answer: (reply: Message) => void }[]; recoveries: string[] } {
    const sent: { message: Message; answer: (reply: Message) => void }[] = [];
    const recoveries: string[] = [];
    const outbox = { enqueue: (_kind: string, message: Message, _timeout: number, settle: (reply: Message) => void) => sent.push({ message, answer: settle }) };
    const events = {
      deliver: () => {},
      state: () => {},
      transport: () => {},
      recovery: (pattern: string, outcome: { recovered: boolean }) => recoveries.push(`${pattern} ${outcome.recovered}`),
      refused: () => {},
    };
    const session = { state: 'connected' as const, retry: () => {}, rehandshake: () => {} };
    const subs = new Subscriptions(session, outbox as unknown as Outbox, events, { timeout: 1000 } as ResolvedOptions);
    return { subs, sent, recoveries };
  }

  const position = { epoch: 'e1', offset: 4 };
  /** Subscribed to /a, which the server says is at offset 4. */
  async function subscribedToA(): Promise<ReturnType<typeof registry>> {
    const r = registry();
    const subscribed = r.subs.need('/a');
    r.sent[0]!.answer({ channel: '/meta/subscribe', successful: true, subscription: '/a', ext: { positions: { '/a': position } } });
    assert.deepEqual(await subscribed, { recovered: undefined });
    return r;
  }

  /** The line is left (lost or moved from), and the resync answered with `recovered`. */
  function resync(r: ReturnType<typeof registry>, causes: ('lost' | 'moved')[], recovered: boolean): void {
    for (const cause of causes) r.subs.lineLost(cause);
    r.subs.sendWanted();
    const last = r.sent.at(-1)!;
    assert.deepEqual((last.message.ext as { recover?: unknown }).recover, { '/a': position }, 'the resync asks from the last position');
    last.answer({ channel: '/meta/subscribe', successful: true, subscription: '/a', ext: { recovered: { '/a': recovered } } });
  }

  it('after a lost line, reports the recovery, complete or not', async () => {
    const complete = await subscribedToA();
    resync(complete, ['lost'], true);
    assert.deepEqual(complete.recoveries, ['/a true']);
    const lossy = await subscribedToA();
    resync(lossy, ['lost'], false);
    assert.deepEqual(lossy.recoveries, ['/a false']);
  });

  it('after a move to another line, reports only a loss: nothing was cut', async () => {
    const complete = await subscribedToA();
    resync(complete, ['moved'], true);
    assert.deepEqual(complete.recoveries, []);
    const lossy = await subscribedToA();
    resync(lossy, ['moved'], false);
    assert.deepEqual(lossy.recoveries, ['/a false']);
  });

  it('a line lost around a move makes its resync a recovery like any other', async () => {
    const lostThenMoved = await subscribedToA();
    resync(lostThenMoved, ['lost', 'moved'], true);
    assert.deepEqual(lostThenMoved.recoveries, ['/a true']);
    const movedThenLost = await subscribedToA();
    resync(movedThenLost, ['moved', 'lost'], true);
    assert.deepEqual(movedThenLost.recoveries, ['/a true']);
  });
  it('asks again for a recovery the server could not read after a backoff with jitter, from its start once it could', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    let draw = 0;
    t.mock.method(Math, 'random', () => draw);
    const r = await subscribedToA();
    const unavailable = (): void => r.sent.at(-1)!.answer({ channel: '/meta/subscribe', successful: true, subscription: '/a', ext: { recoveryUnavailable: true } });
    /** The subscribe is sent again `ms` after the last refusal, and not a millisecond sooner. */
    const askedAgainAfter = (ms: number, what: string): void => {
      const before = r.sent.length;
      t.mock.timers.tick(ms - 1);
      assert.equal(r.sent.length, before, `${what}: not before ${ms} ms`);
      t.mock.timers.tick(1);
      assert.equal(r.sent.length, before + 1, `${what}: at ${ms} ms`);
      assert.deepEqual((r.sent.at(-1)!.message.ext as { recover?: unknown }).recover, { '/a': position });
    };
    r.subs.lineLost('lost');
    r.subs.sendWanted();
    draw = 0.9;
    unavailable();
    askedAgainAfter(225, 'first: 0.9 of 250 ms');
    draw = 0.5;
    unavailable();
    askedAgainAfter(250, 'second: 0.5 of 500 ms');
    draw = 0.01;
    unavailable();
    askedAgainAfter(100, 'third: 0.01 of 1 000 ms is 10, but never sooner than 100');
    for (let i = 0; i < 6; i++) {
      draw = 0.999;
      unavailable();
      t.mock.timers.tick(8_000);
    }
    draw = 0.75;
    unavailable();
    askedAgainAfter(6_000, 'later: 0.75 of at most 8 000 ms');
    r.sent.at(-1)!.answer({ channel: '/meta/subscribe', successful: true, subscription: '/a', ext: { recovered: { '/a': true } } });
    assert.deepEqual(r.recoveries, ['/a true']);
    r.subs.lineLost('lost');
    r.subs.sendWanted();
    draw = 0.9;
    unavailable();
    askedAgainAfter(225, 'after a recovery, the backoff starts again');
  });
});

describe('subscriptions: a wildcard resync and the channels it never received from', () => {
  /** A registry subscribed to /w/*, its line lost and the resync sent; `delivered` lists what the application got. */
  async function resyncing(seen: Message[] = []): Promise<{ subs: Subscriptions; delivered: string[]; answer: (reply: Message) => void }> {
    const sent: { message: Message; answer: (reply: Message) => void }[] = [];
    const delivered: string[] = [];
    const outbox = { enqueue: (_kind: string, message: Message, _timeout: number, settle: (reply: Message) => void) => sent.push({ message, answer: settle }) };
    const events = { deliver: (message: Message) => delivered.push(`${message.channel}:${String(message.data)}`), state: () => {}, transport: () => {}, recovery: () => {}, refused: () => {} };
    const session = { state: 'connected' as const, retry: () => {}, rehandshake: () => assert.fail('no gap is to be taken for a loss') };
    const subs = new Subscriptions(session, outbox as unknown as Outbox, events, { timeout: 1000 } as ResolvedOptions);
    const subscribed = subs.need('/w/*');
    sent[0]!.answer({ channel: '/meta/subscribe', successful: true, subscription: '/w/*' });
    await subscribed;
    for (const message of seen) subs.deliver(message);
    subs.lineLost('lost');
    // What waited for the session comes in the answer to its first connect, before the resync leaves.
    return {
      subs,
      delivered,
      answer: (reply) => {
        subs.sendWanted();
        const resync = sent.at(-1)!;
        assert.deepEqual((resync.message.ext as { recover?: unknown }).recover, {}, 'a wildcard that received nothing asks all the same');
        resync.answer(reply);
      },
    };
  }
  const message = (offset: number, epoch = 'e1'): Message => ({ channel: '/w/b', data: `b${offset}`, ext: { position: { epoch, offset } } });
  const recovered = { channel: '/meta/subscribe', successful: true, subscription: '/w/*', ext: { recovered: { '/w/b': true }, positions: { '/w/b': { epoch: 'e1', offset: 0 } } } };

  it('a message that came before the resync is not taken for the channel start: the replay that follows the answer brings all, each once', async () => {
    const r = await resyncing();
    r.subs.deliver(message(2));
    assert.deepEqual(r.delivered, [], 'held until the answer');
    r.answer(recovered);
    assert.deepEqual(r.delivered, [], 'past the replay start: the replay brings it');
    for (const offset of [1, 2]) r.subs.deliver(message(offset));
    r.subs.deliver(message(3));
    assert.deepEqual(r.delivered, ['/w/b:b1', '/w/b:b2', '/w/b:b3']);
  });

  it('a replay that comes before the answer, after a live message, is delivered in order, each once', async () => {
    const r = await resyncing();
    for (const offset of [2, 1, 2]) r.subs.deliver(message(offset));
    assert.deepEqual(r.delivered, []);
    r.answer(recovered);
    r.subs.deliver(message(3));
    assert.deepEqual(r.delivered, ['/w/b:b1', '/w/b:b2', '/w/b:b3']);
  });

  it('whatever the order of the live messages, the replay and the answer, each message arrives once and in order', async () => {
    // A seeded generator: a failure names the case that shows it.
    let seed = 42;
    const random = (n: number): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 300; round++) {
      const r = await resyncing();
      // Offsets 1..swallowed went down the dead line; swallowed+1..queued waited on the server and
      // come first; the resync replays 1..replayed (what was published before it was handled);
      // the rest is published after it, live behind the replay.
      const swallowed = 1 + random(4);
      const queued = swallowed + random(4);
      const replayed = queued + random(3);
      const last = replayed + random(3);
      const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);
      const stream = [...range(1, replayed), ...range(replayed + 1, last)];
      for (const offset of range(swallowed + 1, queued)) r.subs.deliver(message(offset));
      // The answer comes in its own response: anywhere between the messages that follow.
      const answerAt = random(stream.length + 1);
      const answer = { ...recovered, ext: { ...recovered.ext, positions: { '/w/b': { epoch: 'e1', offset: 0 } } } };
      stream.forEach((offset, i) => {
        if (i === answerAt) r.answer(answer);
        r.subs.deliver(message(offset));
      });
      if (answerAt === stream.length) r.answer(answer);
      const context = `swallowed ${swallowed}, queued to ${queued}, replayed to ${replayed}, last ${last}, answered after ${answerAt}`;
      assert.deepEqual(r.delivered, range(1, last).map((offset) => `/w/b:b${offset}`), context);
    }
  });

  it('a channel the resync did not recover gets what was held, as it came', async () => {
    const r = await resyncing();
    for (const offset of [5, 6]) r.subs.deliver(message(offset));
    r.answer({ channel: '/meta/subscribe', successful: true, subscription: '/w/*' });
    assert.deepEqual(r.delivered, ['/w/b:b5', '/w/b:b6']);
  });

  it('a refused resync, or a new session, lets what was held through', async () => {
    const refused = await resyncing();
    refused.subs.deliver(message(5));
    refused.answer({ channel: '/meta/subscribe', successful: false, subscription: '/w/*', error: '403::forbidden' });
    assert.deepEqual(refused.delivered, ['/w/b:b5']);
    const renewed = await resyncing();
    renewed.subs.deliver(message(5));
    renewed.subs.newSession();
    assert.deepEqual(renewed.delivered, ['/w/b:b5']);
  });

  it('a channel already received from, and a message without a position, are not held', async () => {
    const r = await resyncing([{ channel: '/w/a', data: 'a1', ext: { position: { epoch: 'e1', offset: 1 } } }]);
    r.subs.deliver({ channel: '/w/a', data: 'a2', ext: { position: { epoch: 'e1', offset: 2 } } });
    r.subs.deliver({ channel: '/w/c', data: 'plain' });
    assert.deepEqual(r.delivered, ['/w/a:a1', '/w/a:a2', '/w/c:plain']);
  });
});
