/**
 * The pieces of "nothing missed", one at a time: channel history and its bounds, retention rules,
 * the replay allowance of the outbound queue, the ack window, and the publish-id memory.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HistoryStore, type Retention } from '../src/engine/history.js';
import { retentionResolver } from '../src/engine/retention.js';
import { OutboundQueue } from '../src/core/outbound-queue.js';
import { Acknowledgement } from '../src/extensions/ack.js';
import { RecentIds } from '../src/engine/recent-ids.js';
import { readRecoverRequests } from '../src/core/recovery.js';
import { PerihelionError, resolveOptions } from '../src/index.js';

function store(retention: Retention, maxChannels = 100, maxChars = Infinity): { history: HistoryStore; clock: { now: number } } {
  const clock = { now: 1_000_000 };
  return { history: new HistoryStore({ retentionFor: () => retention, maxChannels, maxChars }, () => clock.now), clock };
}

/** Publishes `text` on `channel` as the memory engine does; `now` is the store's clock. */
function publish(history: HistoryStore, channel: string, text: string, _now: number): number {
  const log = history.log(channel, true)!;
  const { offset } = log.next();
  history.append(log, text);
  return offset;
}

describe('channel history', () => {
  it('numbers messages 1, 2, 3… within one epoch and keeps the latest `size`', () => {
    const { history, clock } = store({ size: 3, ttl: 60_000 });
    const offsets = ['a', 'b', 'c', 'd', 'e'].map((text) => publish(history, '/c', text, clock.now));
    assert.deepEqual(offsets, [1, 2, 3, 4, 5]);
    const page = history.read('/c')!;
    assert.equal(page.position!.offset, 5);
    assert.deepEqual(page.payloads, ['c', 'd', 'e']);
    assert.equal(page.complete, true);
    assert.deepEqual(history.read('/c', { limit: 2 })!.payloads, ['d', 'e'], 'the latest `limit`');
  });

  it('gives back every message as it was published, whatever its characters, through growth, compaction and emptying', () => {
    const { history, clock } = store({ size: 7, ttl: 60_000 });
    const texts: string[] = [];
    // Lengths from 1 to 900 characters, ASCII and not (2, 3 and 4 bytes per character in UTF-8),
    // so the log's buffer grows, moves its kept bytes to the front, and is replaced by a smaller one.
    const pieces = ['a', 'é', '日本語', '😀', '"\\', '\u2028'];
    for (let i = 0; i < 400; i++) {
      const text = `${i}:${pieces[i % pieces.length]!.repeat(1 + ((i * 37) % 150))}`;
      texts.push(text);
      publish(history, '/c', text, clock.now);
      assert.deepEqual(history.read('/c')!.payloads, texts.slice(-7), `after publish ${i}`);
    }
    const { epoch } = history.position('/c')!;
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 396 }, 100), texts.slice(-4));
    assert.equal(history.stats().chars, texts.slice(-7).reduce((sum, text) => sum + text.length, 0), 'counted in characters');
    // Every message expires: the log keeps its position and nothing else, and goes on from there.
    clock.now += 60_001;
    history.sweep();
    assert.deepEqual([history.read('/c')!.payloads, history.stats().chars], [[], 0]);
    publish(history, '/c', 'after é', clock.now);
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 400 }, 100), ['after é']);
  });

  it('gives what was missed after a position, and refuses what it no longer has', () => {
    const { history, clock } = store({ size: 3, ttl: 60_000 });
    for (const text of ['a', 'b', 'c', 'd', 'e']) publish(history, '/c', text, clock.now);
    const { epoch } = history.position('/c')!;
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 3 }, 100), ['d', 'e']);
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 2 }, 100), ['c', 'd', 'e'], 'exactly the oldest kept');
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 5 }, 100), [], 'nothing missed');
    assert.equal(history.missedSince('/c', { epoch, offset: 1 }, 100), null, 'message 2 is gone');
    assert.equal(history.missedSince('/c', { epoch, offset: 6 }, 100), null, 'a position from the future');
    assert.equal(history.missedSince('/c', { epoch: `${epoch}x`, offset: 3 }, 100), null, 'another epoch');
    assert.equal(history.missedSince('/c', { epoch, offset: 2 }, 2), null, 'more than the replay budget');
    assert.equal(history.missedSince('/never', { epoch, offset: 0 }, 100), null, 'a channel it does not know');
    const since = history.read('/c', { since: { epoch, offset: 3 }, limit: 1 })!;
    assert.deepEqual([since.payloads, since.complete], [['d'], true]);
    const stale = history.read('/c', { since: { epoch, offset: 0 } })!;
    assert.deepEqual([stale.payloads, stale.complete], [[], false]);
  });

  it('forgets messages past their age, and a client that saw the last one still recovers', () => {
    const { history, clock } = store({ size: 100, ttl: 10_000 });
    publish(history, '/c', 'old', clock.now);
    clock.now += 6000;
    publish(history, '/c', 'new', clock.now);
    const { epoch } = history.position('/c')!;
    clock.now += 5000;
    assert.deepEqual(history.read('/c')!.payloads, ['new']);
    assert.equal(history.missedSince('/c', { epoch, offset: 0 }, 100), null, '"old" expired unseen');
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 1 }, 100), ['new']);
    clock.now += 10_000;
    history.sweep();
    assert.deepEqual(history.stats(), { channels: 1, messages: 0, chars: 0 });
    assert.deepEqual(history.missedSince('/c', { epoch, offset: 2 }, 100), [], 'saw everything: nothing missed, even with all expired');
    assert.equal(publish(history, '/c', 'next', clock.now), 3, 'offsets go on after expiry');
  });

  it('remembers at most maxChannels, forgetting the least recently published; a forgotten channel gets a new epoch', () => {
    const { history, clock } = store({ size: 10, ttl: 60_000 }, 2);
    publish(history, '/a', 'a1', clock.now);
    const epochA = history.position('/a')!.epoch;
    publish(history, '/b', 'b1', clock.now);
    publish(history, '/a', 'a2', clock.now); // /a is now the most recent
    publish(history, '/c', 'c1', clock.now); // evicts /b
    assert.equal(history.stats().channels, 2);
    assert.equal(history.position('/a')!.epoch, epochA);
    assert.equal(history.read('/b')!.position, null, '/b was forgotten');
    publish(history, '/b', 'b-again', clock.now);
    assert.equal(history.position('/b')!.offset, 1);
  });

  it('gives positions to channels without messages apart: subscribes to ever new names push out no history', () => {
    const { history, clock } = store({ size: 10, ttl: 60_000 }, 2);
    publish(history, '/a', 'a1', clock.now);
    publish(history, '/b', 'b1', clock.now);
    const first = history.position('/fresh/0')!;
    assert.equal(first.offset, 0);
    for (let i = 1; i <= 100; i++) history.position(`/fresh/${i}`);
    assert.deepEqual(history.read('/a')!.payloads, ['a1'], 'no history was forgotten');
    assert.deepEqual(history.read('/b')!.payloads, ['b1']);
    assert.equal(history.stats().channels, 4, 'two logs, and the two latest positions without messages');
    assert.notEqual(history.position('/fresh/0')!.epoch, first.epoch, 'the oldest such position was forgotten: a new epoch');
    assert.equal(history.missedSince('/fresh/0', first, 100), null, 'so its recovery fails');

    const kept = history.position('/fresh/100')!;
    assert.deepEqual(history.missedSince('/fresh/100', kept, 100), [], 'nothing missed where nothing was published');
    assert.equal(history.missedSince('/fresh/100', { epoch: kept.epoch, offset: 1 }, 100), null, 'a position from the future');
    assert.deepEqual(history.read('/fresh/100', { since: kept }), { position: kept, payloads: [], complete: true });
    assert.equal(history.read('/fresh/100', { since: first })!.complete, false);
    publish(history, '/fresh/100', 'f1', clock.now);
    assert.deepEqual(history.position('/fresh/100'), { epoch: kept.epoch, offset: 1 }, 'its first message keeps the epoch it was given');
    assert.deepEqual(history.missedSince('/fresh/100', kept, 100), ['f1']);
    assert.equal(history.read('/a')!.position, null, 'a channel with a message is a log like any other: /a, the least recent, gave way');
  });

  it('forgets the logs of channels that yield (presence) before any other', () => {
    const clock = { now: 1_000_000 };
    const resolve = retentionResolver([], { size: 10, ttl: 60_000 }, (channel) => channel.startsWith('/presence/'));
    assert.deepEqual(resolve('/presence/a'), { size: 10, ttl: 60_000, yields: true });
    assert.deepEqual(resolve('/a'), { size: 10, ttl: 60_000 });
    const history = new HistoryStore({ retentionFor: resolve, maxChannels: 3, maxChars: Infinity }, () => clock.now);
    publish(history, '/a', 'a1', clock.now);
    publish(history, '/b', 'b1', clock.now);
    for (let i = 0; i < 50; i++) publish(history, `/presence/churn${i}`, 'join', clock.now);
    assert.deepEqual(history.read('/a')!.payloads, ['a1'], 'presence churn pushed out no other history');
    assert.deepEqual(history.read('/b')!.payloads, ['b1']);
    assert.deepEqual(history.read('/presence/churn49')!.payloads, ['join'], 'the latest presence log is kept');
    assert.equal(history.read('/presence/churn48')!.position, null);
    publish(history, '/presence/churn49', 'leave', clock.now); // the most recently published of all
    publish(history, '/c', 'c1', clock.now);
    assert.equal(history.read('/presence/churn49')!.position, null, 'a yielding log goes first, however recent');
    assert.deepEqual(history.read('/a')!.payloads, ['a1']);
    publish(history, '/d', 'd1', clock.now);
    assert.equal(history.read('/a')!.position, null, 'with none left, the least recently published goes');
    assert.equal(history.stats().channels, 3);
  });

  it('drops the oldest messages of yielding channels first when over maxChars', () => {
    const clock = { now: 1_000_000 };
    const resolve = retentionResolver([], { size: 100, ttl: 60_000 }, (channel) => channel.startsWith('/presence/'));
    const history = new HistoryStore({ retentionFor: resolve, maxChannels: 100, maxChars: 40 }, () => clock.now);
    for (let i = 0; i < 2; i++) publish(history, '/a', 'a'.repeat(10), clock.now);
    for (let i = 0; i < 2; i++) publish(history, '/presence/a', 'p'.repeat(10), clock.now);
    publish(history, '/a', 'a'.repeat(10), clock.now);
    assert.equal(history.read('/a')!.payloads.length, 3, '/a, published before the presence channel, kept everything');
    assert.equal(history.read('/presence/a')!.payloads.length, 1);
  });

  it('forgets the least recently published channel whatever the order of publishes before', () => {
    const { history, clock } = store({ size: 10, ttl: 60_000 }, 3);
    const alive = (): string[] => ['/a', '/b', '/c', '/d', '/e', '/f'].filter((channel) => history.read(channel)!.position !== null);
    for (const channel of ['/a', '/b', '/c', '/a']) publish(history, channel, 'x', clock.now);
    publish(history, '/d', 'x', clock.now); // order of last publishes: b, c, a, d
    assert.deepEqual(alive(), ['/a', '/c', '/d']);
    publish(history, '/c', 'x', clock.now); // a, d, c
    publish(history, '/e', 'x', clock.now); // d, c, e
    assert.deepEqual(alive(), ['/c', '/d', '/e']);
    publish(history, '/d', 'x', clock.now);
    publish(history, '/c', 'x', clock.now); // e, d, c
    publish(history, '/f', 'x', clock.now); // d, c, f
    assert.deepEqual(alive(), ['/c', '/d', '/f']);
  });

  it('keeps all history within maxChars, dropping the oldest messages of the least recently published channels first', () => {
    const { history, clock } = store({ size: 100, ttl: 60_000 }, 100, 100);
    for (let i = 0; i < 4; i++) publish(history, '/quiet', 'q'.repeat(10), clock.now);
    for (let i = 0; i < 6; i++) publish(history, '/busy', 'b'.repeat(10), clock.now);
    assert.equal(history.stats().chars, 100);
    publish(history, '/busy', 'b'.repeat(30), clock.now);
    assert.ok(history.stats().chars <= 100, `within the bound (${history.stats().chars})`);
    assert.equal(history.read('/quiet')!.payloads.length, 1, '/quiet, published least recently, gave up its oldest three');
    assert.equal(history.read('/busy')!.payloads.length, 7, '/busy kept everything');
    const quiet = history.position('/quiet')!;
    assert.equal(history.missedSince('/quiet', { epoch: quiet.epoch, offset: 0 }, 100), null, 'a dropped message cannot be recovered');
    assert.deepEqual(history.missedSince('/quiet', { epoch: quiet.epoch, offset: 3 }, 100), ['q'.repeat(10)]);
    // One huge message on the only channel: even its own history gives way.
    publish(history, '/busy', 'x'.repeat(90), clock.now);
    assert.ok(history.stats().chars <= 100);
    assert.deepEqual(history.read('/busy')!.payloads, ['x'.repeat(90)]);
  });

  it('follows retention rules by pattern, first match first; size 0 means no history and no position', () => {
    const resolve = retentionResolver(
      [
        { channel: '/ticks/**', size: 0 },
        { channel: '/chat/*', size: 5, ttl: 2000 },
        { channel: '/chat/**', size: 50 },
      ],
      { size: 1000, ttl: 600_000 },
    );
    assert.deepEqual(resolve('/ticks/eur/usd'), { size: 0, ttl: 600_000 });
    assert.deepEqual(resolve('/chat/room'), { size: 5, ttl: 2000 });
    assert.deepEqual(resolve('/chat/room/thread'), { size: 50, ttl: 600_000 });
    assert.deepEqual(resolve('/news'), { size: 1000, ttl: 600_000 });
    const history = new HistoryStore({ retentionFor: resolve, maxChannels: 10, maxChars: Infinity });
    assert.equal(history.log('/ticks/eur/usd'), null);
    assert.equal(history.position('/ticks/eur/usd'), null);
    assert.equal(history.read('/ticks/eur/usd'), null);
    assert.equal(history.log('/chat/room')!.retention.size, 5);
  });

  it('validates history options, naming the rule and field at fault', () => {
    const refused = (options: object, pattern: RegExp): void => {
      assert.throws(() => resolveOptions(options), (error: unknown) => error instanceof PerihelionError && pattern.test(error.message), JSON.stringify(options));
    };
    refused({ historySize: -1 }, /"historySize" must be an integer from 0/);
    refused({ historyTtl: 10 }, /"historyTtl" must be an integer from 1000/);
    refused({ history: {} }, /"history" must be a list/);
    refused({ history: [{ channel: 'chat' }] }, /"history"\[0\]\.channel: .*start with "\/"/);
    refused({ history: [{ channel: '/a', size: 5 }, { channel: '/b', keep: 5 }] }, /"history"\[1\] has unknown field "keep"/);
    refused({ history: [{ channel: '/a', ttl: '1h' }] }, /"history"\[0\]\.ttl must be an integer/);
    refused({ queueOverflow: 'block' }, /"queueOverflow" must be "drop-oldest" or "disconnect"/);
    refused({ ack: 'yes' }, /"ack" must be true or false/);
    const resolved = resolveOptions({ history: [{ channel: '/chat/**', size: 10 }], queueOverflow: 'disconnect' });
    assert.deepEqual(resolved.history, [{ channel: '/chat/**', size: 10 }]);
    assert.equal(resolved.queueOverflow, 'disconnect');
    assert.equal(resolveOptions().historySize, 1000);
  });
});

describe('outbound queue with replays and resends', () => {
  it('keeps every replayed message and drops live ones only beyond the limit plus the replay', () => {
    const queue = new OutboundQueue(2);
    queue.pushAll(['r1', 'r2', 'r3']);
    assert.equal(queue.push('live1'), true, 'the replay widened the limit');
    assert.equal(queue.push('live2'), true);
    assert.equal(queue.push('live3'), false, 'beyond limit + replay the oldest goes');
    assert.deepEqual(queue.drain(), ['r2', 'r3', 'live1', 'live2', 'live3']);
    assert.equal(queue.dropped, 1);
    queue.push('a');
    queue.push('b');
    assert.equal(queue.full, true, 'the allowance ends with the drain');
    queue.unshiftAll(['resent']);
    assert.deepEqual(queue.drain(), ['resent', 'a', 'b']);
  });
});

describe('ack window', () => {
  it('resends what a closed batch lost, never what is still in flight', () => {
    const ack = new Acknowledgement(100);
    assert.deepEqual(ack.handshakeReply, { enabled: true, batch: 0 });
    ack.written(['m1', 'm2']);
    assert.equal(ack.close(), 1, 'the connect reply carrying m1, m2 closes batch 1');
    ack.written(['m3']); // pushed after the reply: belongs to batch 2, in flight
    assert.deepEqual(ack.acknowledge(0), ['m1', 'm2'], 'the client never got batch 1');
    ack.written(['m1', 'm2']); // written again
    assert.equal(ack.close(), 2);
    assert.deepEqual(ack.acknowledge(2), [], 'all received');
    assert.equal(ack.pending, 0);
    ack.written(['m4']);
    assert.deepEqual(ack.acknowledge(2), [], 'm4 is in the open batch: not resent');
    assert.equal(ack.pending, 1);
  });

  it('remembers at most `limit` unacknowledged messages', () => {
    const ack = new Acknowledgement(3);
    ack.written(['a', 'b', 'c', 'd', 'e']);
    ack.close();
    assert.deepEqual(ack.acknowledge(0), ['c', 'd', 'e']);
    assert.equal(ack.dropped, 2);
  });
});

describe('recent publish ids', () => {
  it('recognises an id until `size` newer ones pushed it out, and forgets a refused one', () => {
    const ids = new RecentIds(3);
    for (const id of ['1', '2', '3']) ids.add(id);
    assert.equal(ids.has('1'), true);
    ids.add('4');
    assert.equal(ids.has('1'), false);
    assert.equal(ids.has('4'), true);
    ids.delete('3');
    assert.equal(ids.has('3'), false);
    ids.add('5');
    ids.add('6');
    assert.deepEqual(['2', '4', '5', '6'].map((id) => ids.has(id)), [false, true, true, true]);
  });
});

describe('recovery requests', () => {
  const limits = { maxEntries: 10, maxChannelLength: 1024 };
  const at = (offset: number) => ({ epoch: 'e', offset });

  it('gives each entry to the first pattern of the subscribe that matches it, and ignores the rest', () => {
    const read = readRecoverRequests({ '/a/b': at(1), '/a/b/c': at(2), '/x/y': at(3), '/other': at(4) }, ['/a/**', '/a/*', '/x/y'], limits);
    assert.ok(read.ok);
    assert.deepEqual(Object.fromEntries([...read.byPattern].map(([pattern, list]) => [pattern, list.map((r) => r.channel)])), {
      '/a/**': ['/a/b', '/a/b/c'],
      '/x/y': ['/x/y'],
    });
    const exactFirst = readRecoverRequests({ '/a/b': at(1) }, ['/a/b', '/a/**'], limits);
    assert.ok(exactFirst.ok);
    assert.deepEqual([...exactFirst.byPattern.keys()], ['/a/b']);
  });

  it('refuses more entries than allowed, saying how many', () => {
    const many = Object.fromEntries(Array.from({ length: 11 }, (_, i) => [`/c/${i}`, at(i)]));
    const read = readRecoverRequests(many, ['/c/*'], limits);
    assert.equal(read.ok, false);
    assert.match((read as { error: string }).error, /^400:ext\.recover:Bad request: at most 10 channels$/);
  });
});
