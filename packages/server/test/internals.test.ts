import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TimerWheel, type TimerHandle } from '../src/core/timer-wheel.js';
import { OutboundQueue } from '../src/core/outbound-queue.js';
import { waitFor } from './helpers.js';
import { SubscriptionIndex } from '../src/engine/subscription-index.js';
import { ChannelSet } from '../src/core/channel-set.js';
import { MAX_PATTERN_CHANNELS, ServerSession, type SessionHost } from '../src/core/session.js';
import { ListenerRegistry } from '../src/core/listeners.js';
import { LineWatchers } from '../src/core/line-watchers.js';
import { SharedStrings } from '../src/http/shared-strings.js';
import { LeanWebSocket } from '../src/transports/websocket.js';
import type { LineWatcher, PushConnection } from '../src/core/contract.js';
import { ExtensionPipeline } from '../src/extensions/pipeline.js';
import { resolveOptions, DEFAULTS } from '../src/options.js';
import { ERROR_CODES, PerihelionError } from '../src/errors.js';
import { BrowserIds, browserIdOf } from '../src/security/browser-cookie.js';
import { readBodyThen, type BodyResult } from '../src/http/body.js';
import { RedisConnection } from '../src/engine/redis-connection.js';
import { resolveRedisOptions } from '../src/engine/redis-options.js';
import { CatchUp } from '../src/engine/redis-catch-up.js';
import { KnownOwners } from '../src/core/known-owners.js';
import type { Publication } from '../src/engine/engine.js';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

describe('timer wheel', () => {
  it('fires deadlines in order, never early, and skips cancelled ones', async () => {
    const wheel = new TimerWheel(10);
    const fired: string[] = [];
    const start = Date.now();
    const times: Record<string, number> = {};
    wheel.schedule(60, () => { fired.push('b'); times.b = Date.now() - start; });
    wheel.schedule(20, () => { fired.push('a'); times.a = Date.now() - start; });
    const cancelled = wheel.schedule(40, () => fired.push('never'));
    wheel.cancel(cancelled);
    assert.equal(wheel.pending, 2);
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.deepEqual(fired, ['a', 'b']);
    assert.ok(times.a! >= 20 && times.b! >= 60, JSON.stringify(times));
    assert.equal(wheel.pending, 0);
    wheel.stop();
  });

  it('fires thousands of deadlines amid cancels once each, in the order of their ticks, never early', async () => {
    const wheel = new TimerWheel(5);
    const start = Date.now();
    const fired: { id: number; at: number; due: number }[] = [];
    const live = new Map<number, TimerHandle>();
    let seed = 7;
    const random = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let id = 0; id < 3000; id++) {
      const handle = wheel.schedule(Math.floor(random() * 200), () => fired.push({ id, at: wheel.time(), due: handle.due }));
      live.set(id, handle);
      // A third are cancelled, some of those set again (as a session's expiry at each connect).
      if (random() < 0.33) {
        wheel.cancel(handle);
        live.delete(id);
        if (random() < 0.5) {
          const again = wheel.schedule(Math.floor(random() * 200), () => fired.push({ id, at: wheel.time(), due: again.due }));
          live.set(id, again);
        }
      }
    }
    assert.equal(wheel.pending, live.size);
    await waitFor(() => wheel.pending === 0, 3000, 'every deadline fired');
    assert.deepEqual(fired.map((f) => f.id).sort((a, b) => a - b), [...live.keys()].sort((a, b) => a - b), 'each live deadline once, no cancelled one');
    assert.ok(fired.every((f) => f.at >= f.due), 'none early');
    const ticks = fired.map((f) => Math.ceil(f.due / 5));
    assert.ok(ticks.every((tick, i) => i === 0 || tick >= ticks[i - 1]!), 'in the order of their ticks');
    assert.ok(Date.now() - start < 3000);
    wheel.stop();
  });

  it('keeps its times small: its clock starts when it is made (V8 keeps small integers in the objects holding them)', () => {
    let clock = 1_765_000_000_000;
    const wheel = new TimerWheel(100, undefined, () => clock);
    clock += 2_500;
    assert.equal(wheel.time(), 2_500);
    const handle = wheel.schedule(30_000, () => {});
    assert.equal(handle.due, 32_500);
    assert.ok(handle.due < 2 ** 30, 'a small integer');
    wheel.stop();
  });

  it('keeps its heap of ticks bounded while one deadline is cancelled and set again', () => {
    const wheel = new TimerWheel(100);
    let handle = wheel.schedule(60_000, () => {});
    for (let i = 0; i < 10_000; i++) {
      wheel.cancel(handle);
      handle = wheel.schedule(60_000 + (i % 3) * 1000, () => {});
    }
    const { ticks, buckets } = wheel as unknown as { ticks: number[]; buckets: Map<number, unknown> };
    assert.ok(ticks.length <= 2 * buckets.size + 65, `${ticks.length} ticks kept for ${buckets.size} buckets`);
    assert.equal(wheel.pending, 1);
    wheel.stop();
  });

  it('keeps firing the others when one callback throws', async () => {
    const errors: unknown[] = [];
    const wheel = new TimerWheel(10, (error) => errors.push(error));
    let ran = false;
    wheel.schedule(10, () => { throw new Error('boom'); });
    wheel.schedule(10, () => { ran = true; });
    await new Promise((resolve) => setTimeout(resolve, 60));
    assert.ok(ran);
    assert.equal(errors.length, 1);
    wheel.stop();
  });
});

describe('outbound queue', () => {
  it('drops the oldest when full, counts the drops, and drains in order', () => {
    const queue = new OutboundQueue(3);
    for (const item of ['1', '2', '3']) assert.equal(queue.push(item), true);
    assert.equal(queue.push('4'), false);
    assert.equal(queue.push('5'), false);
    assert.equal(queue.dropped, 2);
    assert.equal(queue.length, 3);
    assert.deepEqual(queue.drain(), ['3', '4', '5']);
    assert.equal(queue.length, 0);
  });

  it('holds at most its limit however many messages pass through', () => {
    const queue = new OutboundQueue(10);
    for (let i = 0; i < 10_000; i++) queue.push(String(i));
    assert.equal(queue.length, 10);
    assert.ok((queue as unknown as { items: string[] }).items.length <= 21, 'compacted storage stays proportional to the limit');
    assert.deepEqual(queue.drain(), Array.from({ length: 10 }, (_, i) => String(9990 + i)));
  });
});

describe('outbound queue: one message at a time (the flush of a lone publish)', () => {
  it('takes the one message queued, then queues and takes the next in the same storage', () => {
    const queue = new OutboundQueue(3);
    queue.push('a', 1000);
    assert.equal(queue.oldestAt, 1000, "the caller's clock is kept");
    assert.equal(queue.takeOnly(), 'a');
    assert.equal(queue.length, 0);
    queue.push('b', 2000);
    assert.equal(queue.oldestAt, 2000);
    assert.equal(queue.length, 1);
    assert.equal(queue.takeOnly(), 'b');
    assert.equal(queue.length, 0);
  });

  it('takes the newest message after drops left a dead prefix, and starts clean', () => {
    const queue = new OutboundQueue(1);
    queue.push('1');
    assert.equal(queue.push('2'), false, 'the oldest was dropped');
    assert.equal(queue.length, 1);
    assert.equal(queue.takeOnly(), '2');
    assert.equal(queue.length, 0);
    queue.push('3');
    assert.deepEqual(queue.drain(), ['3'], 'nothing of the dead prefix came back');
  });
});

describe('subscription index', () => {
  it('matches exact channels and wildcards, each session once', () => {
    const index = new SubscriptionIndex();
    index.add('s1', '/a/b');
    index.add('s1', '/a/*');
    index.add('s2', '/a/**');
    index.add('s3', '/b/*');
    assert.deepEqual([...index.match('/a/b')].sort(), ['s1', 's2']);
    assert.deepEqual([...index.match('/a/b/c')], ['s2']);
    assert.deepEqual([...index.match('/b/x')], ['s3']);
    assert.deepEqual([...index.match('/c')], []);
  });

  it('forgets a removed session everywhere', () => {
    const index = new SubscriptionIndex();
    index.add('s1', '/a');
    index.add('s1', '/b/**');
    index.add('s2', '/a');
    assert.deepEqual(index.removeSession('s1').sort(), ['/a', '/b/**']);
    assert.deepEqual([...index.match('/a')], ['s2']);
    assert.equal(index.count('/b/**'), 0);
    assert.deepEqual([...index.patterns()], [['/a', 1]]);
  });

  it('finds wildcard subscriptions made after exact ones, and exact ones once the wildcards are gone', () => {
    const index = new SubscriptionIndex();
    index.add('s1', '/a/b');
    assert.deepEqual([...index.match('/a/b')], ['s1']);
    index.add('s2', '/a/*');
    index.add('s3', '/**');
    assert.deepEqual([...index.match('/a/b')].sort(), ['s1', 's2', 's3']);
    assert.deepEqual([...index.match('/x')], ['s3']);
    index.remove('s2', '/a/*');
    assert.deepEqual([...index.match('/a/b')].sort(), ['s1', 's3']);
    index.removeSession('s3');
    assert.deepEqual([...index.match('/a/b')], ['s1']);
    assert.deepEqual([...index.match('/x')], []);
    index.add('s4', '/a/**');
    index.add('s4', '/a/**');
    index.remove('s4', '/a/**');
    index.remove('s4', '/a/**');
    index.add('s5', '/a/*');
    assert.deepEqual([...index.match('/a/c')], ['s5'], 'a wildcard counted once however often it was added and removed');
  });

  it("keeps each session's patterns right from one to several and back to none", () => {
    const index = new SubscriptionIndex();
    index.add('s1', '/a');
    assert.deepEqual([...index.subscriptionsOf('s1')], ['/a'], 'one pattern');
    assert.equal(index.add('s1', '/a'), false, 'the same pattern again is no news');
    assert.deepEqual([...index.subscriptionsOf('s1')], ['/a']);
    index.add('s1', '/b/*');
    index.add('s1', '/c');
    assert.deepEqual([...index.subscriptionsOf('s1')].sort(), ['/a', '/b/*', '/c'], 'several');
    assert.equal(index.remove('s1', '/x'), false, 'a pattern it never had');
    index.remove('s1', '/a');
    index.remove('s1', '/c');
    assert.deepEqual([...index.subscriptionsOf('s1')], ['/b/*'], 'down to one');
    index.remove('s1', '/b/*');
    assert.deepEqual([...index.subscriptionsOf('s1')], [], 'none');
    assert.deepEqual(index.removeSession('s1'), [], 'nothing left to remove');

    index.add('s2', '/only');
    index.remove('s2', '/other');
    assert.deepEqual([...index.subscriptionsOf('s2')], ['/only'], 'removing another pattern leaves its one');
    assert.deepEqual(index.removeSession('s2'), ['/only']);
    assert.deepEqual([...index.subscriptionsOf('s2')], []);
    assert.deepEqual([...index.patterns()], [], 'nothing kept for anyone');
  });
});

describe('line watchers', () => {
  it('tell each session bound to a line of its drains, and of its close once', () => {
    const heard: string[] = [];
    const watcher = (name: string): LineWatcher => ({ lineClosed: () => void heard.push(`${name} closed`), lineDrained: () => void heard.push(`${name} drained`) });
    const line = {} as PushConnection;
    const watchers = new LineWatchers();
    const a = watcher('a');
    assert.equal(watchers.add(a), true, 'the first: the line starts reporting');
    assert.equal(watchers.add(a), false, 'given twice, kept once');
    assert.equal(watchers.sole(), a, 'one watcher: its writes are its own');
    const b = watcher('b');
    assert.equal(watchers.add(b), false);
    assert.equal(watchers.add(b), false, 'the second given twice, kept once');
    assert.equal(watchers.sole(), null, 'two watchers: none is the sole one');
    watchers.drained(line);
    watchers.closed(line);
    watchers.closed(line);
    watchers.drained(line);
    assert.deepEqual(heard, ['a drained', 'b drained', 'a closed', 'b closed']);
    assert.equal(watchers.sole(), null, 'forgotten once told of the close');
  });
});

describe('shared strings', () => {
  it('keep one copy of each value, bounded: past the entry limit the table starts again, a value past the length limit is not kept', () => {
    const shared = new SharedStrings(3, 20);
    const agent = ['Mozilla/5', '.0'].join('');
    assert.equal(shared.share(agent), 'Mozilla/5.0');
    assert.equal(shared.share('Mozilla/5.0'), agent);
    assert.equal(shared.size, 1, 'the same value kept once');
    assert.equal(shared.share('x'.repeat(21)), 'x'.repeat(21), 'too long: given back');
    assert.equal(shared.size, 1, 'too long: not kept');
    // A client sending a new value each time cannot grow it.
    for (let i = 0; i < 1000; i++) assert.equal(shared.share(`v${i}`), `v${i}`);
    assert.ok(shared.size <= 3, `${shared.size} kept`);
  });
});

describe('the WebSocket the server makes', () => {
  it("keeps its listeners in a plain object (not EventEmitter's hash table) and shares one empty extensions table, and still emits to them", () => {
    const make = (): LeanWebSocket => new (LeanWebSocket as unknown as new (address: null, protocols: undefined, options: object) => LeanWebSocket)(null, undefined, { autoPong: true, maxPayload: 1024 });
    const a = make();
    const b = make();
    const internals = (ws: LeanWebSocket): { _events: object; _extensions: object } => ws as unknown as { _events: object; _extensions: object };
    assert.equal(Object.getPrototypeOf(internals(a)._events), Object.prototype, 'an object literal, which V8 keeps as a plain object');
    assert.deepEqual(Object.keys(internals(a)._events).sort(), ['close', 'error', 'message', 'pong']);
    assert.equal(internals(a)._extensions, internals(b)._extensions, 'one extensions table for all');
    assert.ok(Object.isFrozen(internals(a)._extensions));
    const heard: string[] = [];
    a.on('message', (data: unknown) => void heard.push(`message ${String(data)}`));
    a.on('ping', () => void heard.push('ping'));
    a.emit('message', 'hi');
    a.emit('ping');
    assert.deepEqual(heard, ['message hi', 'ping']);
    assert.equal(b.listenerCount('message'), 0, 'each socket its own table');
  });
});

describe('in-process listeners', () => {
  it('are asked about broadcasts only while one listens outside /service', async () => {
    const registry = new ListenerRegistry(() => {});
    const heard: string[] = [];
    registry.add('/service/presence', () => 'answer');
    assert.equal(registry.hearsBroadcasts, false, 'a service listener hears no broadcast');
    const stop = registry.add('/chat/**', (message) => void heard.push(message.channel));
    const again = registry.add('/chat/**', () => {});
    assert.equal(registry.hearsBroadcasts, true);
    await registry.notify({ channel: '/chat/a', data: 1 }, null);
    assert.deepEqual(heard, ['/chat/a']);
    stop();
    assert.equal(registry.hearsBroadcasts, true, 'another listener is still on the pattern');
    again();
    assert.equal(registry.hearsBroadcasts, false);
  });
});

describe('extension pipeline', () => {
  it('runs incoming hooks in order and outgoing hooks in reverse, and stops on a refusal', async () => {
    const pipeline = new ExtensionPipeline();
    const seen: string[] = [];
    pipeline.add({ incoming: (m) => (seen.push('in1'), m), outgoing: (m) => (seen.push('out1'), m) });
    pipeline.add({ incoming: (m) => (seen.push('in2'), { ...m, error: '403::no' }), outgoing: (m) => (seen.push('out2'), m) });
    pipeline.add({ incoming: (m) => (seen.push('in3'), m) });
    const context = { session: null, transport: null };
    const result = await pipeline.incoming({ channel: '/a' }, context);
    assert.equal(result?.error, '403::no');
    await pipeline.outgoing({ channel: '/a' }, context);
    assert.deepEqual(seen, ['in1', 'in2', 'out2', 'out1']);
  });

  it('answers at once while every hook does, waits from the first that answers with a promise (or a thenable), and makes a throw a rejection', async () => {
    const context = { session: null, transport: null };
    const sync = new ExtensionPipeline();
    sync.add({ incoming: (m) => ({ ...m, ext: { one: 1 } }) });
    sync.add({ incoming: (m) => ({ ...m, ext: { ...m.ext, two: 2 } }) });
    const answered = sync.incoming({ channel: '/a' }, context);
    assert.ok(!(answered instanceof Promise), 'no promise made for synchronous hooks');
    assert.deepEqual((answered as { ext?: unknown }).ext, { one: 1, two: 2 });

    const mixed = new ExtensionPipeline();
    const seen: string[] = [];
    mixed.add({ incoming: (m) => (seen.push('sync'), m) });
    mixed.add({ incoming: (m) => ({ then: (resolve: (value: unknown) => void) => (seen.push('thenable'), resolve({ ...m, data: 'from a thenable' })) }) as never });
    mixed.add({ incoming: async (m) => (seen.push('async'), { ...m, ext: { last: true } }) });
    const waited = mixed.incoming({ channel: '/a' }, context);
    assert.ok(waited instanceof Promise);
    assert.deepEqual(await waited, { channel: '/a', data: 'from a thenable', ext: { last: true } });
    assert.deepEqual(seen, ['sync', 'thenable', 'async']);

    const refusing = new ExtensionPipeline();
    refusing.add({ incoming: async (m) => ({ ...m, error: '403::no' }) });
    refusing.add({ incoming: () => assert.fail('a hook after a refusal ran') });
    assert.equal((await refusing.incoming({ channel: '/a' }, context))?.error, '403::no');

    const throwing = new ExtensionPipeline();
    throwing.add({ incoming: () => { throw new Error('hook failed'); } });
    const thrown = throwing.incoming({ channel: '/a' }, context);
    assert.ok(thrown instanceof Promise);
    await assert.rejects(thrown as Promise<unknown>, /hook failed/);
  });

  it('rejects unknown hook names', () => {
    assert.throws(() => new ExtensionPipeline().add({ incomming: () => null } as never), /unknown extension hook "incomming"/);
  });
});

describe('options', () => {
  it('fills defaults', () => {
    assert.deepEqual(resolveOptions({}), DEFAULTS);
    assert.equal(resolveOptions({ path: '/cometd/' }).path, '/cometd');
  });

  it('names the option and what it accepts when a value is wrong', () => {
    const cases: [object, RegExp][] = [
      [{ timeot: 1 }, /unknown option "timeot"; known options are: .*timeout/],
      [{ timeout: -1 }, /"timeout" must be an integer from 0/],
      [{ maxQueue: 1.5 }, /"maxQueue" must be an integer/],
      [{ path: 'bayeux' }, /"path" must be a URL path starting with "\/"/],
      [{ transports: ['smoke-signals'] }, /unknown connection type "smoke-signals"/],
      [{ transports: ['callback-polling'] }, /needs "jsonp: true"/],
      [{ jsonp: 'yes' }, /"jsonp" must be true or false/],
      [{ transports: [] }, /non-empty list/],
      [{ allowedOrigins: ['example.com'] }, /is not an origin/],
      [{ engine: 'redis://127.0.0.1:6379' }, /"engine" must be an engine object, such as a MemoryEngine or a RedisEngine/],
      [{ engine: {} }, /"engine" must be an engine object/],
    ];
    for (const [options, pattern] of cases) {
      assert.throws(() => resolveOptions(options as never), (error: Error) => error instanceof PerihelionError && error.code === 'ERR_INVALID_OPTION' && pattern.test(error.message), JSON.stringify(options));
    }
  });
});

describe('error codes', () => {
  it('are each documented in docs/errors.md', () => {
    const docs = readFileSync(fileURLToPath(new URL('../../../../docs/errors.md', import.meta.url)), 'utf8');
    for (const code of Object.keys(ERROR_CODES)) assert.match(docs, new RegExp(`\`${code}\``), `${code} is missing from docs/errors.md`);
  });
});

describe('browser cookie', () => {
  const idOf = (cookie: string | undefined): string | undefined => browserIdOf({ headers: { cookie } } as IncomingMessage);
  const id = 'S-IFAtN-TXv7QJruZZIVRfk9';

  it('finds the id alone, first, last or among other cookies', () => {
    assert.equal(idOf(`BAYEUX_BROWSER=${id}`), id);
    assert.equal(idOf(`BAYEUX_BROWSER=${id}; a=1`), id);
    assert.equal(idOf(`a=1; BAYEUX_BROWSER=${id}`), id);
    assert.equal(idOf(`a=1;BAYEUX_BROWSER=${id};b=2`), id);
    assert.equal(idOf(`a=1;  BAYEUX_BROWSER=${id} ; b=2`), id);
  });

  it('takes no cookie whose name only ends with the name, and no malformed id', () => {
    assert.equal(idOf(undefined), undefined);
    assert.equal(idOf(''), undefined);
    assert.equal(idOf(`XBAYEUX_BROWSER=${id}`), undefined);
    assert.equal(idOf('BAYEUX_BROWSER=short'), undefined);
    assert.equal(idOf('BAYEUX_BROWSER=has spaces inside it!'), undefined);
    assert.equal(idOf(`BAYEUX_BROWSER=${'x'.repeat(65)}`), undefined);
  });

  it('takes the first well-formed id when the name comes more than once', () => {
    assert.equal(idOf(`BAYEUX_BROWSER=bad; BAYEUX_BROWSER=${id}`), id);
    assert.equal(idOf(`XBAYEUX_BROWSER=${id.toLowerCase()}; BAYEUX_BROWSER=${id}`), id);
  });
});

describe('browser ids given to cookie-less requests', () => {
  const KEY = 'ab'.repeat(32);
  const keyed = (windowMs: number, key = KEY): BrowserIds => {
    const ids = new BrowserIds(windowMs);
    ids.useKey(key);
    return ids;
  };

  it('gives an address the same id within a bucket of the window, a new one in the next, and others their own', () => {
    const ids = keyed(5000);
    const first = ids.give('10.0.0.1', 10_000);
    assert.match(first, /^[0-9a-z]{8}[A-Za-z0-9_-]{24}$/);
    assert.match(first, /^[A-Za-z0-9_-]{16,64}$/, 'a well-formed cookie value');
    assert.equal(ids.give('10.0.0.1', 14_999), first);
    assert.notEqual(ids.give('10.0.0.2', 10_000), first);
    assert.notEqual(ids.give('10.0.0.1', 15_000), first);
    assert.notEqual(ids.give(undefined, 10_000), ids.give(undefined, 10_000), 'a request without an address shares nothing');
  });

  it('gives the same id on every node that shares the key, and another under another key', () => {
    assert.equal(keyed(5000).give('10.0.0.1', 10_000), keyed(5000).give('10.0.0.1', 10_000));
    assert.notEqual(keyed(5000, 'cd'.repeat(32)).give('10.0.0.1', 10_000), keyed(5000).give('10.0.0.1', 10_000));
  });

  it('takes ids of one address in the same or adjacent buckets for one browser, and nothing else', () => {
    const ids = keyed(5000);
    const at = (address: string, now: number): string => ids.give(address, now);
    const id = at('10.0.0.1', 10_000);
    assert.ok(ids.sameBrowser(at('10.0.0.1', 9_999), id, '10.0.0.1'), 'either side of a bucket edge');
    assert.ok(ids.sameBrowser(id, at('10.0.0.1', 15_000), '10.0.0.1'));
    assert.ok(!ids.sameBrowser(id, at('10.0.0.1', 20_000), '10.0.0.1'), 'two buckets apart');
    assert.ok(!ids.sameBrowser(id, at('10.0.0.2', 10_000), '10.0.0.1'), 'given to another address');
    assert.ok(!ids.sameBrowser(at('10.0.0.2', 10_000), at('10.0.0.2', 10_001), '10.0.0.1'), 'checked against the address asked about');
    assert.ok(!keyed(5000, 'cd'.repeat(32)).sameBrowser(id, at('10.0.0.1', 11_000), '10.0.0.1'), 'under another key');
    const forged = id.slice(0, 8) + 'A'.repeat(24);
    assert.ok(!ids.sameBrowser(forged, id, '10.0.0.1'), 'a forged id');
    assert.ok(!ids.sameBrowser(`${(parseInt(id.slice(0, 8), 36) + 1).toString(36).padStart(8, '0')}${id.slice(8)}`, id, '10.0.0.1'), 'an id moved to another bucket');
    assert.ok(!ids.sameBrowser('x'.repeat(24), id, '10.0.0.1'), 'a random id');
  });

  it('gives every request a new id with a window of 0, and takes none for one browser', () => {
    const ids = keyed(0);
    const [a, b] = [ids.give('10.0.0.1', 1000), ids.give('10.0.0.1', 1000)];
    assert.notEqual(a, b);
    assert.ok(!ids.sameBrowser(a, b, '10.0.0.1'));
  });
});

describe('request body reading', () => {
  /** A server that reads each body and reports the result and the listeners left on the request. */
  async function bodyServer(limit: number, idleMs: number): Promise<{ url: string; close: () => Promise<void>; results: { result: BodyResult; left: Function[] }[] }> {
    const results: { result: BodyResult; left: Function[] }[] = [];
    const server = http.createServer((req, res) => {
      readBodyThen(req, limit, idleMs, (result) => {
        results.push({ result, left: [...req.listeners('data'), ...req.listeners('end'), ...req.listeners('error')] });
        res.writeHead(result.ok ? 200 : result.status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}/`, results, close: () => new Promise((resolve) => server.close(() => resolve())) };
  }

  it('reads a body and leaves on the request only listeners shared by every request (a held long-poll keeps its request)', async () => {
    const s = await bodyServer(1024, 1000);
    try {
      const body = '[{"channel":"/meta/connect"}]';
      for (const chunks of [[body], [body.slice(0, 9), body.slice(9, 20), body.slice(20)]]) {
        const response = await new Promise<number>((resolve, reject) => {
          const req = http.request(s.url, { method: 'POST', headers: { 'Content-Length': String(body.length) } }, (res) => resolve(res.statusCode ?? 0));
          req.on('error', reject);
          // In chunks apart in time, so the server reads more than one.
          const next = (): void => void (chunks.length === 0 ? req.end() : (req.write(chunks.shift()!), setTimeout(next, 20)));
          next();
        });
        assert.equal(response, 200);
      }
      assert.deepEqual(s.results.map(({ result }) => result), [{ ok: true, text: body }, { ok: true, text: body }]);
      // Nothing made for one request stays on it: what is left is the same for both, and keeps nothing of either.
      assert.equal(s.results[0]!.left.length, 3);
      assert.deepEqual(s.results[1]!.left, s.results[0]!.left, 'a listener made for one request stayed on it');
    } finally {
      await s.close();
    }
  });

  it('refuses a body past the limit, and one that stalls, each once', async () => {
    const s = await bodyServer(16, 200);
    try {
      assert.equal((await fetch(s.url, { method: 'POST', body: 'x'.repeat(64) })).status, 413);
      // A body that announces more than it sends stalls: given up on after the idle limit.
      const stalled = await new Promise<number>((resolve, reject) => {
        const req = http.request(s.url, { method: 'POST', headers: { 'Content-Length': '10' } }, (res) => resolve(res.statusCode ?? 0));
        req.on('error', reject);
        req.write('abc');
      });
      assert.equal(stalled, 400);
      assert.equal(s.results.length, 2, 'a body was answered more than once');
      assert.deepEqual(s.results.map(({ result }) => (result.ok ? 'ok' : result.reason)), ['request body of 64 bytes exceeds the limit of 16 bytes', 'request body stalled']);
      // The first was refused before it was read: nothing was put on it.
      assert.deepEqual(s.results.map(({ left }) => left.length), [0, 3]);
    } finally {
      await s.close();
    }
  });
});

describe('a session\'s channel set', () => {
  it('is a live ReadonlySet from none to several members and back, a string while it holds one', () => {
    const set = new ChannelSet();
    const look = (): unknown => ({ size: set.size, members: [...set], values: [...set.values()], keys: [...set.keys()], entries: [...set.entries()] });
    assert.deepEqual(look(), { size: 0, members: [], values: [], keys: [], entries: [] });
    assert.equal(set.has('/a'), false);
    assert.equal(set.delete('/a'), false);

    assert.equal(set.add('/a'), set);
    set.add('/a');
    assert.deepEqual(look(), { size: 1, members: ['/a'], values: ['/a'], keys: ['/a'], entries: [['/a', '/a']] });
    assert.equal(set.has('/a'), true);
    assert.equal(set.has('/b'), false);
    assert.equal((set as unknown as { many: unknown }).many, null, 'one member needs no set');

    assert.equal(set.hasPattern, false);
    set.add('/b').add('/c/*');
    assert.equal(set.hasPattern, true, 'a pattern among them');
    set.add('/c/*');
    set.delete('/c/*');
    assert.equal(set.hasPattern, false, 'counted once, however often added');
    set.add('/c/*');
    assert.deepEqual(look(), { size: 3, members: ['/a', '/b', '/c/*'], values: ['/a', '/b', '/c/*'], keys: ['/a', '/b', '/c/*'], entries: [['/a', '/a'], ['/b', '/b'], ['/c/*', '/c/*']] });
    assert.equal(set.has('/c/*'), true);
    const seen: [string, string, unknown][] = [];
    const context = {};
    set.forEach(function (this: unknown, value, key, whole) {
      assert.equal(this, context);
      seen.push([value, key, whole]);
    }, context);
    assert.deepEqual(seen, [['/a', '/a', set], ['/b', '/b', set], ['/c/*', '/c/*', set]]);

    assert.equal(set.delete('/a'), true);
    assert.equal(set.delete('/a'), false);
    assert.deepEqual([...set], ['/b', '/c/*']);
    set.delete('/b');
    set.delete('/c/*');
    assert.deepEqual(look(), { size: 0, members: [], values: [], keys: [], entries: [] });

    set.add('/x');
    set.clear();
    assert.deepEqual(look(), { size: 0, members: [], values: [], keys: [], entries: [] });
    set.add('/y');
    assert.deepEqual([...set], ['/y']);
    assert.equal(set.delete('/z'), false);
    assert.deepEqual([...set], ['/y']);
  });
});

describe('the Redis connection\'s reports', () => {
  it('a burst of requests served locally before the loss is known is one report, then the loss, then nothing until Redis answers again', () => {
    const reports: string[] = [];
    const restored: string[] = [];
    const connection = new RedisConnection(resolveRedisOptions({ url: 'redis://127.0.0.1:1' }), 'test', {
      onMessage: () => {},
      onReconnect: () => {},
      deaf: () => {},
      hearingAgain: () => {},
      report: (error) => {
        reports.push((error as Error).message);
        connection.troubled();
      },
      restored: (message) => restored.push(message),
      outage: () => outages++,
    });
    let outages = 0;
    assert.equal(connection.away(), null);
    for (let i = 0; i < 50; i++) connection.degraded(new Error(`published on /c${i} to this node's sessions only, without a position`));
    assert.deepEqual(reports, ["Redis is unreachable; serving this node's sessions only: published on /c0 to this node's sessions only, without a position"]);
    assert.match(connection.away()!, /^Redis at redis:\/\/127\.0\.0\.1:1 has not answered for \d+\.\d s; this node serves its own sessions only$/);
    connection.lost(new Error('connect ECONNREFUSED'));
    connection.lost(new Error('connect ECONNREFUSED'));
    connection.degraded(new Error('published on /later'));
    assert.equal(reports.length, 2);
    assert.match(reports[1]!, /^lost the connection to Redis/);
    assert.equal(outages, 1, 'what the node does meanwhile is to be written again');
    // A heartbeat went through, but the node does not hear the bus yet: not back until it does.
    connection.healthy();
    assert.equal(restored.length, 0);
    assert.notEqual(connection.away(), null);
    Object.assign(connection as unknown as { sub: unknown; subscribedAs: number }, { sub: { status: 'ready' }, subscribedAs: 1 });
    connection.healthy();
    assert.equal(restored.length, 1);
    assert.equal(connection.away(), null);
  });

  it('a command that timed out takes a hung Redis for away, since it was sent', () => {
    const reports: string[] = [];
    let outages = 0;
    const connection = new RedisConnection(resolveRedisOptions({ url: 'redis://127.0.0.1:1', commandTimeout: 3000 }), 'test', {
      onMessage: () => {},
      onReconnect: () => {},
      deaf: () => {},
      hearingAgain: () => {},
      report: (error) => reports.push((error as Error).message),
      restored: () => {},
      outage: () => outages++,
    });
    // Started (at start a failure is final instead, and reported by `open`).
    (connection as unknown as { started: boolean }).started = true;
    connection.failed(new Error('ERR wrong number of arguments'));
    assert.equal(connection.away(), null, 'a command Redis refused is no outage');
    connection.failed(new Error('Command timed out'));
    assert.equal(outages, 1);
    assert.deepEqual(reports, ["Redis answered nothing within 3000 ms (commandTimeout); serving this node's sessions only until it answers again: Command timed out"]);
    assert.match(connection.away()!, /has not answered for 3\.\d s/, 'counted from when the command was sent');
    // Taken for away: the requests of the outage do not wait for it (nor report each).
    connection.degraded(new Error('Command timed out'));
    assert.equal(reports.length, 1);
  });
});

describe('a session\'s first positions through patterns', () => {
  it('keeps the channels first sent latest, each at its first position', () => {
    const session = new ServerSession('s', {} as SessionHost, 10);
    for (let i = 0; i <= MAX_PATTERN_CHANNELS; i++) session.sentThroughPattern(`/c/${i}`, { epoch: 'e', offset: 1 });
    session.sentThroughPattern('/c/5', { epoch: 'e', offset: 9 });
    const first = session.firstSentThroughPattern!;
    assert.equal(first.size, MAX_PATTERN_CHANNELS);
    assert.equal(first.has('/c/0'), false, 'the one first sent longest ago went');
    assert.deepEqual(first.get('/c/5'), { epoch: 'e', offset: 1 }, 'the first position stays');
    assert.equal(first.has(`/c/${MAX_PATTERN_CHANNELS}`), true);
  });
});

describe("a node's catch-up after it did not hear the bus", () => {
  const epoch = 'e1';
  const at = (offset: number): { epoch: string; offset: number } => ({ epoch, offset });
  const live = (offset: number): Publication => ({ channel: '/c', payload: `{"channel":"/c","data":${offset},"ext":{"position":{"epoch":"${epoch}","offset":${offset}}}}`, position: at(offset) }) as Publication;
  const nowhere = (): void => assert.fail('nothing waits long enough to be given up');
  /** Delivers as the engine does: through `heard`, which leaves out what was delivered already. */
  const deliverer = (catchUp: CatchUp, out: number[]) => (publication: Publication): void => {
    if (catchUp.heard('/c', publication.position!)) out.push(publication.position!.offset);
  };

  it('delivers the replay first, then what waited, each once, and then nothing at or before what it delivered', () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(3));
    catchUp.deafened(() => true);
    // Heard after the renewed SUBSCRIBE, before the read: waits.
    assert.equal(catchUp.held('/c', live(6), nowhere), true);
    assert.equal(catchUp.held('/c', live(7), nowhere), true);
    assert.deepEqual([...catchUp.takeDue()], [['/c', at(3)]]);
    catchUp.end('/c', [4, 5, 6].map((n) => live(n).payload), deliverer(catchUp, out));
    assert.deepEqual(out, [4, 5, 6, 7]);
    assert.equal(catchUp.held('/c', live(8), nowhere), false, 'caught up: live again');
    assert.equal(catchUp.heard('/c', at(7)), false, 'a late copy of a replayed message is not delivered again');
  });

  it('leaves its own messages delivered meanwhile out of the replay, and keeps what follows a second loss for the next read', () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(1));
    catchUp.deafened(() => true);
    catchUp.deliveredHere('/c', at(3));
    catchUp.held('/c', live(5), nowhere);
    catchUp.takeDue();
    catchUp.deafened(() => true);
    catchUp.held('/c', live(9), nowhere);
    catchUp.end('/c', [2, 3, 4, 5].map((n) => live(n).payload), deliverer(catchUp, out));
    assert.deepEqual(out, [2, 4, 5], 'its own 3 went out already; 9 waits for the next read');
    assert.deepEqual([...catchUp.takeDue()], [['/c', at(5)]], 'the next read starts where this one ended');
    catchUp.end('/c', [6, 7, 8, 9].map((n) => live(n).payload), deliverer(catchUp, out));
    assert.deepEqual(out, [2, 4, 5, 6, 7, 8, 9]);
  });

  it('leaves its own messages delivered while it heard the bus out of a later replay, and out of their late echo', () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(1));
    // Its own 3 was delivered here without its echo (the subscription was renewed while it was on
    // its way); 2, another node's, is still on the bus.
    catchUp.deliveredHere('/c', at(3));
    assert.equal(catchUp.heard('/c', at(2)), true, "another node's message before it is heard as ever");
    catchUp.deafened(() => true);
    catchUp.takeDue();
    catchUp.end('/c', [3, 4].map((n) => live(n).payload), deliverer(catchUp, out));
    assert.deepEqual(out, [4], 'its own 3, delivered already, is not replayed');
    catchUp.deliveredHere('/c', at(6));
    catchUp.heard('/c', at(5));
    assert.equal(catchUp.heard('/c', at(6)), false, 'nor delivered again when its echo comes late');
    assert.equal(catchUp.heard('/c', at(7)), true);
    // One of another epoch (the history was lost meanwhile) is dropped once the new epoch is heard.
    catchUp.deliveredHere('/c', at(9));
    assert.equal(catchUp.heard('/c', { epoch: 'e2', offset: 1 }), true);
    assert.equal(catchUp.heard('/c', { epoch: 'e2', offset: 9 }), true, 'the same offset in the new epoch is another message');
  });

  it("keeps its own messages published while it is caught up in their place, after what the others published before them", () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(1));
    catchUp.deafened(() => true);
    assert.equal(catchUp.held('/c', live(4), nowhere), true, 'its own 4 waits');
    catchUp.takeDue();
    catchUp.end('/c', [2, 3, 4].map((n) => live(n).payload), deliverer(catchUp, out));
    assert.deepEqual(out, [2, 3, 4], "the others' 2 and 3 first, its own 4 once");
    assert.equal(catchUp.held('/c', live(5), nowhere), false, 'caught up: its own go out at once');
  });

  it('gives a channel up once 10 000 messages wait for its catch-up: they go out, then the next, and a later read brings nothing twice', () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(1));
    catchUp.deafened(() => true);
    catchUp.takeDue();
    for (let n = 2; n < 10_002; n++) assert.equal(catchUp.held('/c', live(n), nowhere), true);
    const deliver = deliverer(catchUp, out);
    assert.equal(catchUp.held('/c', live(10_002), deliver), false, 'the 10 001st is not kept');
    assert.equal(out.length, 10_000, 'what waited went out');
    deliver(live(10_002));
    assert.deepEqual(out.slice(-2), [10_001, 10_002]);
    catchUp.end('/c', [2, 3].map((n) => live(n).payload), deliver);
    assert.equal(out.length, 10_001, 'a read that ends after it brings nothing again');
    assert.equal(catchUp.held('/c', live(10_003), nowhere), false, 'live again');
  });

  it('forgets a channel nobody here subscribes to, and gives what waited when it gives up', () => {
    const catchUp = new CatchUp();
    const out: number[] = [];
    catchUp.heard('/c', at(1));
    catchUp.heard('/gone', at(1));
    catchUp.forget('/gone');
    catchUp.deafened(() => true);
    catchUp.held('/c', live(4), nowhere);
    const from = catchUp.takeDue();
    assert.deepEqual([...from.keys()], ['/c']);
    catchUp.giveUp(from.keys(), deliverer(catchUp, out));
    assert.deepEqual(out, [4]);
  });
});

describe("another node's word for why a session ended", () => {
  it('is taken only when it names a reason the server gives; anything else is no reason', async () => {
    const { isDisconnectReason } = await import('../src/core/events.js');
    for (const reason of ['client', 'expired', 'server', 'shutdown', 'token-expired', 'abuse', 'slow-consumer']) assert.equal(isDisconnectReason(reason), true, reason);
    for (const hostile of ['', 'SERVER', 'server ', 'constructor', '__proto__', 'toString', 42, null, undefined, {}, ['server']]) assert.equal(isDisconnectReason(hostile), false, JSON.stringify(hostile));
  });
});

describe('known owners (forwarding)', () => {
  it('keeps an owner until it lapses or is forgotten, and at most max of them, the oldest going first', () => {
    const owners = new KnownOwners(3, 1000);
    owners.set('s1', 'node-a', 0);
    assert.equal(owners.get('s1', 999), 'node-a');
    assert.equal(owners.get('s1', 1000), undefined, 'lapsed');
    assert.equal(owners.size, 0, 'and dropped');
    for (let i = 1; i <= 5; i++) owners.set(`s${i}`, 'node-b', 0);
    assert.equal(owners.size, 3);
    assert.deepEqual(['s1', 's2', 's3', 's4', 's5'].map((id) => owners.get(id, 1)), [undefined, undefined, 'node-b', 'node-b', 'node-b']);
    owners.set('s3', 'node-c', 1);
    owners.set('s6', 'node-c', 1);
    assert.equal(owners.get('s4', 1), undefined, 'set again, s3 is the newest: s4 went first');
    assert.equal(owners.get('s3', 1), 'node-c');
    owners.forget('s3');
    assert.equal(owners.get('s3', 1), undefined);
  });
});
