/**
 * The engine conformance suite: the same cases run against every engine (memory, Redis), as
 * faye's "faye engine" shared examples do. An engine is driven directly, through a recording
 * host, so that what each session was given (and in which order) can be checked exactly.
 *
 * `distributedEngineConformance` adds the cases that need two engines on one store (Redis).
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serialiseExtLast, type Message, type Position } from '@perihelion/protocol';
import { API_DELIVERER, API_PUBLISHER, CLIENT_KEYS, type Engine, type EngineHost, type HistorySettings, type LostSession, type Publication, type PublishOnce, type Retention, type SessionInfo } from '../src/index.js';
import { waitFor } from './helpers.js';

/** What the engine gave each session, in order, and what it reported. */
export class RecordingHost implements EngineHost {
  readonly received = new Map<string, string[]>();
  readonly replayed = new Map<string, number>();
  /** Every publication handed to the server (for in-process listeners), in order. */
  readonly publications: Publication[] = [];
  readonly errors: unknown[] = [];
  /** Sessions the engine asked this node to end. */
  readonly ended: string[] = [];
  readonly historySettings: HistorySettings;
  /** What this node says of its sessions when asked (Engine.census). */
  described: SessionInfo[] = [];

  constructor(retention: (channel: string) => Retention = () => ({ size: 100, ttl: 60_000 }), maxChannels = 1000) {
    // maxChars (a memory bound) is the memory engine's own; Redis is bounded by its maxmemory.
    this.historySettings = { retentionFor: retention, maxChannels, maxChars: 1 << 30 };
  }

  onPublication(publication: Publication, clientIds: Iterable<string>): void {
    this.publications.push(publication);
    for (const id of clientIds) if (id !== publication.exclude) this.push(id, publication.payload);
  }

  describeSessions(): SessionInfo[] {
    return this.described;
  }

  /** Messages other nodes sent this one (Engine.sendToNode), as [from, payload]. */
  readonly nodeMessages: Array<[string, string]> = [];

  onNodeMessage(from: string, payload: string): void {
    this.nodeMessages.push([from, payload]);
  }

  /** Sessions of dead nodes this node was told it removed. */
  readonly lost: LostSession[] = [];

  onSessionsLost(sessions: readonly LostSession[]): void {
    this.lost.push(...sessions);
  }

  /** How many times this node was told its sessions are registered again after being taken for dead. */
  restored = 0;

  reportRestored(): void {}

  onSessionsRestored(): void {
    this.restored++;
  }

  onDirect(publication: Publication, clientId: string): void {
    this.push(clientId, publication.payload);
  }

  onEndSession(clientId: string): void {
    this.ended.push(clientId);
  }

  onReplay(clientId: string, _channel: string, payloads: readonly string[]): void {
    this.replayed.set(clientId, (this.replayed.get(clientId) ?? 0) + payloads.length);
    for (const payload of payloads) this.push(clientId, payload);
  }

  reportError(error: unknown): void {
    this.errors.push(error);
  }

  /** The messages session `clientId` was given, parsed. */
  messages(clientId: string): Message[] {
    return (this.received.get(clientId) ?? []).map((payload) => JSON.parse(payload) as Message);
  }

  /** The data of the messages session `clientId` was given on `channel` (every channel if omitted). */
  data(clientId: string, channel?: string): unknown[] {
    return this.messages(clientId)
      .filter((m) => channel === undefined || m.channel === channel)
      .map((m) => m.data);
  }

  offsets(clientId: string, channel: string): number[] {
    return this.messages(clientId)
      .filter((m) => m.channel === channel)
      .map((m) => (m.ext?.position as Position | undefined)?.offset ?? -1);
  }

  private push(clientId: string, payload: string): void {
    let list = this.received.get(clientId);
    if (!list) this.received.set(clientId, (list = []));
    list.push(payload);
  }
}

/** A publication as the server core makes one: outgoing extensions done, serialised once, ext last. */
export function publication(channel: string, data: unknown, ext?: Record<string, unknown>): Publication {
  const message: Message = { channel, data };
  if (ext) message.ext = ext;
  const serialised = serialiseExtLast(message);
  return { channel, message, payload: serialised.text, ext: serialised.ext };
}

/** A session as a node describes it (for census tests). */
function describedSession(clientId: string, user: string | null): SessionInfo {
  return { clientId, user, roles: [], claims: {}, data: { n: 1 }, connectionType: 'websocket', subscriptions: ['/a'] };
}

export interface EngineFixture {
  /** A new engine on a fresh store; engines made in one test share their store. */
  create(): Engine;
  /** Forgets the store of the test that just ran. */
  reset(): Promise<void>;
  /**
   * How to see the engine forget the least recently used channel: a maxChannels that leaves room
   * for two channels in one LRU, and three channels that share it. Default: maxChannels 2 and
   * /lru/a, /lru/b, /lru/c (one LRU for every channel).
   */
  lru?: { maxChannels: number; channels: readonly [string, string, string] };
}

const positionOf = (payload: string | undefined): Position | undefined => (payload ? ((JSON.parse(payload) as Message).ext?.position as Position | undefined) : undefined);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Retention used by the suite: no history under /nohist, 300 ms under /short, 5 messages under /small. */
function suiteRetention(channel: string): Retention {
  if (channel.startsWith('/nohist/')) return { size: 0, ttl: 60_000 };
  if (channel.startsWith('/short/')) return { size: 100, ttl: 300 };
  if (channel.startsWith('/small/')) return { size: 5, ttl: 60_000 };
  return { size: 1000, ttl: 60_000 };
}

/** Starts engines of `fixture` for the tests of a suite, each with its own recording host; all closed after each test. */
function engines(fixture: EngineFixture): (host?: RecordingHost) => Promise<{ engine: Engine; host: RecordingHost }> {
  const started: Engine[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((engine) => engine.close()));
    await fixture.reset();
  });
  return async (host = new RecordingHost(suiteRetention)) => {
    const engine = fixture.create();
    await engine.start(host);
    started.push(engine);
    return { engine, host };
  };
}

export function engineConformance(name: string, fixture: EngineFixture): void {
  describe(`engine conformance: ${name}`, () => {
    const open = engines(fixture);

    it('delivers a publish to the sessions subscribed to its channel and to no one else', async () => {
      const { engine, host } = await open();
      await engine.subscribe('a', '/chat/room1');
      await engine.subscribe('b', '/chat/room2');
      await engine.publish(publication('/chat/room1', 'hello'));
      assert.deepEqual(host.data('a'), ['hello']);
      assert.deepEqual(host.data('b'), []);
      assert.equal(host.publications.at(-1)?.message.data, 'hello', 'the server gets the message object for its listeners');
    });

    it('matches * one segment deep and ** any depth, one copy per session however many subscriptions match', async () => {
      const { engine, host } = await open();
      await engine.subscribe('star', '/a/*');
      await engine.subscribe('globstar', '/a/**');
      for (const pattern of ['/a/b', '/a/*', '/a/**', '/**']) await engine.subscribe('many', pattern);
      await engine.publish(publication('/a/b', 1));
      await engine.publish(publication('/a/b/c', 2));
      await engine.publish(publication('/other', 3));
      assert.deepEqual(host.data('star'), [1]);
      assert.deepEqual(host.data('globstar'), [1, 2]);
      assert.deepEqual(host.data('many'), [1, 2, 3], 'one copy each, in order');
    });

    it('recognises a repeated idempotency key for forMs, keeping the latest keep of them, with or without history', async () => {
      const { engine, host } = await open();
      await engine.subscribe('s', '/d/keys');
      await engine.subscribe('s', '/nohist/keys');
      const keyed = (channel: string, data: unknown, id: string, forMs = 60_000): boolean | Promise<boolean> => engine.publish({ ...publication(channel, data), once: { client: API_PUBLISHER, id, keep: 2, forMs } });
      for (const channel of ['/d/keys', '/nohist/keys']) {
        const k = (name: string): string => `${channel}:${name}`;
        assert.equal(await keyed(channel, 1, k('a')), true);
        assert.equal(await keyed(channel, 'again', k('a')), false, 'the same key again');
        assert.equal(await keyed(channel, 2, k('b')), true);
        assert.equal(await keyed(channel, 3, k('c')), true);
        assert.equal(await keyed(channel, 4, k('a')), true, 'past the 2 keys kept, a is forgotten');
        assert.equal(await keyed(channel, 'again', k('c')), false, 'c still kept');
        assert.equal(await keyed(channel, 5, k('short'), 300), true);
        assert.equal(await keyed(channel, 'again', k('short'), 300), false, 'within its time');
        await sleep(400);
        assert.equal(await keyed(channel, 6, k('short'), 300), true, 'its time over, the key is forgotten');
      }
      await waitFor(() => host.data('s').length === 12, 3000, () => `12 messages (have ${host.data('s').length})`);
      await sleep(100);
      assert.deepEqual(host.data('s', '/d/keys'), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(host.data('s', '/nohist/keys'), [1, 2, 3, 4, 5, 6]);
    });

    it('recognises a client\'s repeated idempotency key (CLIENT_KEYS), apart from the API\'s', async () => {
      const { engine, host } = await open();
      await engine.subscribe('s', '/d/client-keys');
      const keyed = (client: string, data: unknown, id: string): boolean | Promise<boolean> => engine.publish({ ...publication('/d/client-keys', data), once: { client, id, keep: 10, forMs: 60_000 } });
      assert.equal(await keyed(CLIENT_KEYS, 1, 'ann\u0000k'), true);
      assert.equal(await keyed(CLIENT_KEYS, 'again', 'ann\u0000k'), false, 'the same user and key again');
      assert.equal(await keyed(CLIENT_KEYS, 2, 'bob\u0000k'), true, 'another user\'s');
      assert.equal(await keyed(API_PUBLISHER, 3, 'ann\u0000k'), true, 'the API\'s keys are apart');
      await waitFor(() => host.data('s').length === 3, 3000, () => `3 messages (have ${host.data('s').length})`);
      await sleep(100);
      assert.deepEqual(host.data('s', '/d/client-keys'), [1, 2, 3]);
    });

    it('stops delivering after unsubscribe, and after removeSession', async () => {
      const { engine, host } = await open();
      await engine.subscribe('a', '/x');
      await engine.subscribe('a', '/y/*');
      await engine.subscribe('b', '/x');
      await engine.unsubscribe('a', '/x');
      await engine.publish(publication('/x', 1));
      await engine.publish(publication('/y/z', 2));
      await engine.removeSession('a');
      await engine.publish(publication('/y/z', 3));
      assert.deepEqual(host.data('a'), [2]);
      assert.deepEqual(host.data('b'), [1]);
      assert.equal(await engine.subscriberCount('/y/*'), 0);
    });

    it('gives each message the next offset of its channel in one epoch, in the payload, keeping the ext it had', async () => {
      const { engine, host } = await open();
      await engine.subscribe('a', '/pos/**');
      const first = publication('/pos/x', 1, { trace: 'abc' });
      await engine.publish(first);
      await engine.publish(publication('/pos/x', 2));
      await engine.publish(publication('/pos/y', 3));
      const [x1, x2, y1] = host.messages('a');
      const p1 = x1?.ext?.position as Position;
      assert.equal(p1.offset, 1);
      assert.equal(x1?.ext?.trace, 'abc', 'the ext the message had is kept');
      assert.deepEqual(x2?.ext?.position, { epoch: p1.epoch, offset: 2 });
      assert.equal((y1?.ext?.position as Position).offset, 1, 'each channel counts on its own');
      assert.deepEqual(first.position, p1, 'the publication learns its position');
      assert.deepEqual(first.message.ext?.position, p1, 'and so does the message object (for listeners)');
      assert.equal(host.received.get('a')?.[0], JSON.stringify({ channel: '/pos/x', data: 1, ext: { trace: 'abc', position: p1 } }));
    });

    it('gives no position and keeps no history on a channel with size 0', async () => {
      const { engine, host } = await open();
      const outcome = await engine.subscribe('a', '/nohist/x');
      assert.equal(outcome.position, null);
      await engine.publish(publication('/nohist/x', 1));
      assert.deepEqual(host.messages('a'), [{ channel: '/nohist/x', data: 1 }]);
      assert.equal(await engine.history('/nohist/x'), null);
    });

    it('keeps the latest `size` messages and reads them back, since a position and up to a limit', async () => {
      const { engine } = await open();
      for (let i = 1; i <= 8; i++) await engine.publish(publication('/small/h', i));
      const page = await engine.history('/small/h');
      assert.ok(page);
      assert.equal(page.position?.offset, 8);
      assert.deepEqual(page.payloads.map((p) => (JSON.parse(p) as Message).data), [4, 5, 6, 7, 8]);
      const epoch = page.position!.epoch;
      const since = await engine.history('/small/h', { since: { epoch, offset: 5 } });
      assert.deepEqual(since?.payloads.map((p) => (JSON.parse(p) as Message).data), [6, 7, 8]);
      assert.equal(since?.complete, true);
      const limited = await engine.history('/small/h', { since: { epoch, offset: 4 }, limit: 2 });
      assert.deepEqual(limited?.payloads.map((p) => (JSON.parse(p) as Message).data), [5, 6], 'the oldest after since come first');
      const latest = await engine.history('/small/h', { limit: 2 });
      assert.deepEqual(latest?.payloads.map((p) => (JSON.parse(p) as Message).data), [7, 8]);
      assert.deepEqual(await engine.history('/small/h', { since: { epoch, offset: 2 } }), { position: { epoch, offset: 8 }, payloads: [], complete: false }, 'pruned');
      assert.equal((await engine.history('/small/h', { since: { epoch: 'other', offset: 7 } }))?.complete, false, 'another epoch');
      assert.equal((await engine.history('/small/h', { since: { epoch, offset: 9 } }))?.complete, false, 'from the future');
      assert.deepEqual(await engine.history('/small/never'), { position: null, payloads: [], complete: true });
    });

    it('forgets messages older than `ttl`', async () => {
      const { engine } = await open();
      await engine.publish(publication('/short/t', 1));
      await sleep(200);
      await engine.publish(publication('/short/t', 2));
      await sleep(200);
      const page = await engine.history('/short/t');
      assert.deepEqual(page?.payloads.map((p) => (JSON.parse(p) as Message).data), [2]);
      assert.equal(page?.position?.offset, 2, 'the position stays');
      await sleep(250);
      assert.deepEqual((await engine.history('/short/t'))?.payloads, []);
      assert.equal((await engine.historyStats()).messages, 0);
    });

    it('reports the position of an exact channel on subscribe (offset 0 before any message), none for a pattern', async () => {
      const { engine } = await open();
      const fresh = await engine.subscribe('a', '/p/fresh');
      assert.equal(fresh.position?.offset, 0);
      await engine.publish(publication('/p/fresh', 1));
      const again = await engine.subscribe('b', '/p/fresh');
      assert.deepEqual(again.position, { epoch: fresh.position!.epoch, offset: 1 });
      assert.equal((await engine.subscribe('c', '/p/*')).position, null);
    });

    it('recovers what a session missed, in order, before the live messages', async () => {
      const { engine, host } = await open();
      for (let i = 1; i <= 5; i++) await engine.publish(publication('/r/a', i));
      const epoch = (await engine.history('/r/a'))!.position!.epoch;
      const outcome = await engine.subscribe('a', '/r/a', [{ channel: '/r/a', since: { epoch, offset: 2 } }]);
      assert.deepEqual(outcome.recovered, [{ channel: '/r/a', recovered: true, replayed: 3 }]);
      assert.deepEqual(outcome.position, { epoch, offset: 5 });
      await engine.publish(publication('/r/a', 6));
      assert.deepEqual(host.data('a'), [3, 4, 5, 6]);
      const upToDate = await engine.subscribe('b', '/r/a', [{ channel: '/r/a', since: { epoch, offset: 6 } }]);
      assert.deepEqual(upToDate.recovered, [{ channel: '/r/a', recovered: true, replayed: 0 }]);
    });

    it('recovers channels under a wildcard subscription, each from its own position, within one budget', async () => {
      const { engine, host } = await open();
      for (let i = 1; i <= 3; i++) await engine.publish(publication('/w/a', `a${i}`));
      for (let i = 1; i <= 3; i++) await engine.publish(publication('/w/b', `b${i}`));
      const a = (await engine.history('/w/a'))!.position!.epoch;
      const b = (await engine.history('/w/b'))!.position!.epoch;
      const outcome = await engine.subscribe(
        's',
        '/w/*',
        [
          { channel: '/w/a', since: { epoch: a, offset: 1 } },
          { channel: '/w/b', since: { epoch: b, offset: 0 } },
        ],
        4,
      );
      assert.deepEqual(outcome.recovered, [
        { channel: '/w/a', recovered: true, replayed: 2 },
        { channel: '/w/b', recovered: false, replayed: 0 },
      ], 'three more would pass the budget of 4');
      await engine.publish(publication('/w/b', 'b4'));
      assert.deepEqual(host.data('s'), ['a2', 'a3', 'b4']);
    });

    it('says recovered: false and replays nothing for another epoch, pruned messages, a future position or past maxReplay', async () => {
      const { engine, host } = await open();
      for (let i = 1; i <= 8; i++) await engine.publish(publication('/small/r', i));
      const epoch = (await engine.history('/small/r'))!.position!.epoch;
      const cases: Array<[string, Position, number?]> = [
        ['another epoch', { epoch: 'nope', offset: 7 }],
        ['pruned', { epoch, offset: 1 }],
        ['future', { epoch, offset: 9 }],
        ['past maxReplay', { epoch, offset: 5 }, 2],
      ];
      for (const [label, since, maxReplay] of cases) {
        const outcome = await engine.subscribe(label, '/small/r', [{ channel: '/small/r', since }], maxReplay);
        assert.deepEqual(outcome.recovered, [{ channel: '/small/r', recovered: false, replayed: 0 }], label);
        assert.deepEqual(host.data(label), [], label);
      }
    });

    it('recovery under concurrent publishing leaves no gap and no duplicate at the seam', async () => {
      const { engine, host } = await open();
      const total = 400;
      let published = 0;
      const publisher = (async () => {
        while (published < total) {
          const batch: Array<unknown> = [];
          for (let i = 0; i < 8 && published < total; i++) batch.push(engine.publish(publication('/seam', ++published)));
          await Promise.all(batch);
        }
      })();
      // Sessions recover at different moments while the publisher runs.
      const sessions: Array<{ id: string; since: Position }> = [];
      for (let round = 0; round < 6; round++) {
        await waitFor(() => published > 40 + round * 50, 10_000, 'the publisher to get ahead');
        const page = await engine.history('/seam', { limit: 0 });
        const since = { epoch: page!.position!.epoch, offset: Math.max(0, page!.position!.offset - 25) };
        const id = `s${round}`;
        sessions.push({ id, since });
        const outcome = await engine.subscribe(id, '/seam', [{ channel: '/seam', since }]);
        assert.equal(outcome.recovered[0]?.recovered, true);
      }
      await publisher;
      for (const { id, since } of sessions) {
        await waitFor(() => host.offsets(id, '/seam').at(-1) === total, 5000, `${id} to catch up`);
        const offsets = host.offsets(id, '/seam');
        const expected = Array.from({ length: total - since.offset }, (_, i) => since.offset + 1 + i);
        assert.deepEqual(offsets, expected, `${id}: every offset after ${since.offset}, once, in order`);
      }
    });

    it('counts subscribers per channel or pattern, lists them, and lists every channel with its count', async () => {
      const { engine } = await open();
      await engine.subscribe('a', '/c/1');
      await engine.subscribe('b', '/c/1');
      await engine.subscribe('b', '/c/*');
      await engine.subscribe('b', '/c/1'); // again: no double count
      assert.equal(await engine.subscriberCount('/c/1'), 2);
      assert.deepEqual((await engine.subscribers('/c/1')).sort(), ['a', 'b']);
      assert.deepEqual(await engine.subscribedAmong('/c/1', ['x', 'b', 'y', 'a']), ['b', 'a'], 'which of these, in the order asked');
      assert.deepEqual(await engine.subscribedAmong('/c/*', ['a', 'b']), ['b'], 'exactly that pattern');
      assert.deepEqual(await engine.subscribedAmong('/nobody', ['a']), []);
      assert.deepEqual(await engine.subscribedAmong('/c/1', []), []);
      assert.deepEqual([...(await engine.channels())].sort(), [
        ['/c/*', 1],
        ['/c/1', 2],
      ]);
      await engine.removeSession('b');
      assert.deepEqual([...(await engine.channels())], [['/c/1', 1]]);
      assert.equal(await engine.subscriberCount('/nobody'), 0);
    });

    it("knows each session's user until the session ends (presence)", async () => {
      const { engine } = await open();
      await engine.addSession('u1', 'alice');
      await engine.addSession('u2');
      assert.deepEqual(await engine.usersOf(['u1', 'u2', 'nobody']), ['alice', null, null]);
      assert.deepEqual(await engine.usersOf([]), []);
      // A long list (a busy channel's presence) comes back whole and in order.
      const many = Array.from({ length: 2500 }, (_, i) => (i === 2400 ? 'u1' : `absent-${i}`));
      const users = await engine.usersOf(many);
      assert.equal(users.length, 2500);
      assert.deepEqual([users[2400], users.filter((user) => user !== null).length], ['alice', 1]);
      await engine.removeSession('u1');
      assert.deepEqual(await engine.usersOf(['u1']), [null], 'the user of an ended session is forgotten');
    });

    it('has no other node to name or to message on its own', async () => {
      const { engine } = await open();
      await engine.addSession('mine');
      assert.equal(await engine.ownerOf('mine'), null);
      assert.equal(await engine.ownerOf('unknown'), null);
    });

    it("takes a census of this node's sessions as its host describes them", async () => {
      const { engine, host } = await open();
      host.described = [describedSession('s1', 'ann')];
      assert.deepEqual(await engine.census(), host.described);
    });

    it('keeps a presence grace mark until it is taken or expires, per channel and member', async () => {
      const { engine } = await open();
      assert.equal(await engine.takeLeaving('/room', 'alice'), false, 'no mark yet');
      await engine.markLeaving('/room', 'alice', 5_000);
      await engine.markLeaving('/room', 'al"ice', 5_000);
      assert.equal(await engine.takeLeaving('/other', 'alice'), false, 'another channel');
      assert.equal(await engine.takeLeaving('/room', 'bob'), false, 'another member');
      assert.equal(await engine.takeLeaving('/room', 'alice'), true);
      assert.equal(await engine.takeLeaving('/room', 'alice'), false, 'taken once');
      assert.equal(await engine.takeLeaving('/room', 'al"ice'), true, 'any member id is kept apart from the channel');
      const first = await engine.markLeaving('/room', 'dan', 5_000);
      const second = await engine.markLeaving('/room', 'dan', 5_000);
      assert.equal(await engine.takeLeaving('/room', 'dan', first), false, 'a replaced mark is not taken by its old token');
      assert.equal(await engine.takeLeaving('/room', 'dan', second), true, 'the current mark is taken by its token');
      await engine.markLeaving('/room', 'carol', 40);
      await new Promise((resolve) => setTimeout(resolve, 120));
      assert.equal(await engine.takeLeaving('/room', 'carol'), false, 'expired');
    });

    it('lists the sessions of a user and ends a known session; an unknown one is refused', async () => {
      const { engine, host } = await open();
      await engine.addSession('b1', 'bob');
      await engine.addSession('b2', 'bob');
      await engine.addSession('c1', 'carol');
      assert.deepEqual((await engine.sessionsOfUser('bob')).sort(), ['b1', 'b2']);
      assert.deepEqual(await engine.sessionsOfUser('nobody'), []);
      assert.equal(await engine.endSession('b1'), true);
      assert.equal(await engine.endSession('never-there'), false);
      assert.deepEqual(host.ended, ['b1'], 'the host was asked to end exactly that session');
      await engine.removeSession('b2');
      assert.deepEqual(await engine.sessionsOfUser('bob'), ['b1'], 'an ended session leaves the list when the server removes it');
      await engine.removeSession('c1');
      assert.deepEqual(await engine.sessionsOfUser('carol'), [], 'a user whose last session went has none');
      await engine.addSession('c2', 'carol');
      await engine.addSession('anon', null);
      assert.deepEqual(await engine.sessionsOfUser('carol'), ['c2'], 'and a new one is listed');
      for (let i = 0; i < 50; i++) await engine.addSession(`d${i}`, 'dave');
      for (let i = 0; i < 50; i += 2) await engine.removeSession(`d${i}`);
      assert.deepEqual((await engine.sessionsOfUser('dave')).sort(), Array.from({ length: 25 }, (_, i) => `d${2 * i + 1}`).sort());
    });

    it('sends to one known session, and says false for an unknown or ended one', async () => {
      const { engine, host } = await open();
      await engine.addSession('a');
      assert.equal(await engine.sendTo('a', publication('/private', 'for a')), true);
      assert.deepEqual(host.data('a'), ['for a']);
      assert.equal(await engine.sendTo('nobody', publication('/private', 'lost')), false);
      await engine.removeSession('a');
      assert.equal(await engine.sendTo('a', publication('/private', 'late')), false);
      // With an idempotency key: once; a key that reached no session is not kept.
      const keyed = (clientId: string, data: unknown, id: string): Promise<boolean> => engine.sendTo(clientId, { ...publication('/private', data), once: { client: API_DELIVERER, id, keep: 100, forMs: 60_000 } });
      await engine.addSession('k');
      assert.equal(await keyed('k', 1, 'once'), true);
      assert.equal(await keyed('k', 'again', 'once'), true);
      assert.equal(await keyed('later', 'lost', 'later'), false);
      await engine.addSession('later');
      assert.equal(await keyed('later', 2, 'later'), true);
      // A publish's key is another: the same string does not stop a delivery.
      assert.equal(await engine.publish({ ...publication('/private/p', 'published'), once: { client: API_PUBLISHER, id: 'shared', keep: 100, forMs: 60_000 } }), true);
      assert.equal(await keyed('k', 3, 'shared'), true);
      await waitFor(() => host.data('k').length === 2 && host.data('later').length === 1, 3000, 'the keyed deliveries');
      assert.deepEqual(host.data('k'), [1, 3]);
      assert.deepEqual(host.data('later'), [2]);
    });

    it('counts the channels with history and the messages kept', async () => {
      const { engine } = await open();
      for (let i = 0; i < 7; i++) await engine.publish(publication('/small/s1', i));
      await engine.publish(publication('/s2', 1));
      await engine.publish(publication('/nohist/s3', 1));
      assert.deepEqual(await engine.historyStats(), { channels: 2, messages: 6 });
    });

    it('forgets the least recently used channel past maxChannels; it starts again under a new epoch', async () => {
      const { maxChannels, channels } = fixture.lru ?? { maxChannels: 2, channels: ['/lru/a', '/lru/b', '/lru/c'] };
      const [a, b, c] = channels;
      const { engine } = await open(new RecordingHost(suiteRetention, maxChannels));
      await engine.publish(publication(a, 1));
      const first = (await engine.history(a))!.position!;
      await engine.publish(publication(b, 1));
      await engine.publish(publication(c, 1));
      assert.deepEqual(await engine.history(a), { position: null, payloads: [], complete: true });
      await engine.publish(publication(a, 2));
      const again = (await engine.history(a))!.position!;
      assert.equal(again.offset, 1);
      assert.notEqual(again.epoch, first.epoch);
      assert.equal((await engine.historyStats()).channels, 2);
    });

    it('gives a subscribe a position without pushing out any history; the position holds until its first message', async () => {
      const { maxChannels, channels } = fixture.lru ?? { maxChannels: 2, channels: ['/lru/a', '/lru/b', '/lru/c'] };
      const [a, b, c] = channels;
      const { engine, host } = await open(new RecordingHost(suiteRetention, maxChannels));
      await engine.publish(publication(a, 1));
      await engine.publish(publication(b, 1));
      const given = (await engine.subscribe('s', c)).position!;
      assert.equal(given.offset, 0);
      assert.equal((await engine.history(a))!.payloads.length, 1, 'the history of a is kept');
      assert.equal((await engine.history(b))!.payloads.length, 1, 'and of b');
      const again = await engine.subscribe('t', c, [{ channel: c, since: given }]);
      assert.deepEqual(again.recovered, [{ channel: c, recovered: true, replayed: 0 }], 'nothing published, nothing missed');
      await engine.publish(publication(c, 'first'));
      assert.deepEqual(host.messages('s').at(-1)?.ext?.position, { epoch: given.epoch, offset: 1 }, 'the first message keeps the epoch given');
      assert.deepEqual((await engine.history(a))!.position, null, 'now a log like any other: a, the least recent, gave way');
    });

    it('forgets the history of channels that yield before any other past maxChannels', async () => {
      const { maxChannels, channels } = fixture.lru ?? { maxChannels: 2, channels: ['/lru/a', '/lru/b', '/lru/c'] };
      const [a, b, c] = channels;
      const yieldingA = (channel: string): Retention => (channel === a ? { ...suiteRetention(channel), yields: true } : suiteRetention(channel));
      const { engine } = await open(new RecordingHost(yieldingA, maxChannels));
      await engine.publish(publication(b, 1));
      await engine.publish(publication(a, 1)); // the most recent
      await engine.publish(publication(c, 1));
      assert.deepEqual((await engine.history(a))!.position, null, 'a yielded');
      assert.equal((await engine.history(b))!.payloads.length, 1, 'b, less recent, kept');
      assert.equal((await engine.historyStats()).channels, 2);
    });

    it('refuses to work before start and after close', async () => {
      const engine = fixture.create();
      await assert.rejects(async () => engine.publish(publication('/x', 1)), { code: 'ERR_ENGINE_CLOSED' });
      const { engine: running } = await open();
      await running.close();
      await assert.rejects(async () => running.publish(publication('/x', 1)), { code: 'ERR_ENGINE_CLOSED' });
    });
  });
}

/** Cases for engines that spread one server over several processes: two engines on one store. */
export function distributedEngineConformance(name: string, fixture: EngineFixture): void {
  describe(`distributed engine conformance: ${name}`, () => {
    const open = engines(fixture);

    it('delivers a publish made on one node to the sessions of the other, with the message object for listeners', async () => {
      const a = await open();
      const b = await open();
      await a.engine.subscribe('on-a', '/d/x');
      await b.engine.publish(publication('/d/x', { hello: 'from b' }, { meta: 1 }));
      await waitFor(() => a.host.data('on-a').length === 1, 3000, 'the message on node a');
      const message = a.host.publications.at(-1)!.message;
      assert.deepEqual(message.data, { hello: 'from b' });
      assert.equal(message.ext?.meta, 1);
      assert.equal((message.ext?.position as Position).offset, 1);
      assert.deepEqual(b.host.data('on-a'), [], 'node b has no session on-a to deliver to');
    });

    it('gives every node the same messages in the same order with the same positions', async () => {
      const a = await open();
      const b = await open();
      await a.engine.subscribe('on-a', '/d/order');
      await b.engine.subscribe('on-b', '/d/order');
      await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 === 0 ? a : b).engine.publish(publication('/d/order', i))));
      await waitFor(() => a.host.data('on-a').length === 100 && b.host.data('on-b').length === 100, 5000, '100 messages on each node');
      assert.deepEqual(a.host.received.get('on-a'), b.host.received.get('on-b'), 'byte for byte, in one order');
      assert.deepEqual(a.host.offsets('on-a', '/d/order'), Array.from({ length: 100 }, (_, i) => i + 1));
    });

    it('counts subscribers and channels of every node, on every node', async () => {
      const a = await open();
      const b = await open();
      await a.engine.subscribe('s1', '/d/presence');
      await b.engine.subscribe('s2', '/d/presence');
      await b.engine.subscribe('s2', '/d/*');
      for (const { engine } of [a, b]) {
        assert.equal(await engine.subscriberCount('/d/presence'), 2);
        assert.deepEqual((await engine.subscribers('/d/presence')).sort(), ['s1', 's2']);
        assert.deepEqual(await engine.subscribedAmong('/d/presence', ['s2', 'gone', 's1']), ['s2', 's1'], 'sessions of either node');
        assert.deepEqual(Object.fromEntries(await engine.channels()), { '/d/presence': 2, '/d/*': 1 });
      }
      await b.engine.removeSession('s2');
      assert.deepEqual(Object.fromEntries(await a.engine.channels()), { '/d/presence': 1 });
    });

    it('lets one node at a time hold a state channel: the others learn which, and may claim it once it is given up', async () => {
      const a = await open();
      const b = await open();
      const { claimState, stateHolder, releaseState } = a.engine;
      assert.ok(claimState && stateHolder && releaseState, 'a distributed engine keeps the holders of state channels');
      assert.equal(await a.engine.claimState!('/d/state'), null, 'node a holds it');
      assert.equal(await a.engine.claimState!('/d/state'), null, 'claiming it again keeps it');
      const holder = await b.engine.claimState!('/d/state');
      assert.equal(typeof holder, 'string', 'node b is told which node holds it');
      assert.equal(await b.engine.stateHolder!('/d/state'), holder);
      assert.equal(await a.engine.stateHolder!('/d/state'), null, 'a node is not told it holds a channel itself');
      assert.equal(await b.engine.stateHolder!('/d/other'), null, 'a channel nobody claimed');
      await b.engine.releaseState!('/d/state');
      assert.equal(await b.engine.stateHolder!('/d/state'), holder, "a node that does not hold it cannot give it up");
      await a.engine.releaseState!('/d/state');
      assert.equal(await b.engine.stateHolder!('/d/state'), null, 'given up');
      assert.equal(await b.engine.claimState!('/d/state'), null, 'node b holds it now');
      assert.equal(await a.engine.stateHolder!('/d/state'), await a.engine.claimState!('/d/state'));
    });

    it("ends a session held by another node, and finds a user's sessions on every node", async () => {
      const a = await open();
      const b = await open();
      await a.engine.addSession('dave-on-a', 'dave');
      await b.engine.addSession('dave-on-b', 'dave');
      for (const { engine } of [a, b]) assert.deepEqual((await engine.sessionsOfUser('dave')).sort(), ['dave-on-a', 'dave-on-b']);
      assert.equal(await b.engine.endSession('dave-on-a'), true);
      await waitFor(() => a.host.ended.includes('dave-on-a'), 3000, 'node a to be asked to end its session');
      assert.deepEqual(b.host.ended, [], 'node b ended nothing of its own');
    });

    it('carries the session a broadcast excludes to every node', async () => {
      const a = await open();
      const b = await open();
      for (const id of ['x-on-a', 'x-on-b', 'y-on-b']) await (id.endsWith('a') ? a : b).engine.subscribe(id, '/d/x');
      await a.engine.publish({ ...publication('/d/x', 'not for x-on-b'), exclude: 'x-on-b' });
      await a.engine.publish(publication('/d/x', 'for all'));
      await waitFor(() => b.host.data('y-on-b').length === 2 && a.host.data('x-on-a').length === 2, 3000, 'both publishes everywhere');
      assert.deepEqual(b.host.data('x-on-b'), ['for all']);
    });

    it("recognises a client's resend on another node by its once, with or without history; another id, another client, an id no longer kept are published", async () => {
      const a = await open();
      const b = await open();
      await a.engine.subscribe('on-a', '/d/once');
      await a.engine.subscribe('on-a', '/nohist/once');
      // A client's ids are its own whatever the channel: each channel here has clients of its own.
      const once = (client: string, id: string): PublishOnce => ({ client, id, keep: 2, forMs: 60_000 });
      const sent = async (node: { engine: Engine }, channel: string, data: unknown, by: PublishOnce): Promise<boolean> => node.engine.publish({ ...publication(channel, data), once: { ...by, client: `${by.client} on ${channel}` } });
      for (const channel of ['/d/once', '/nohist/once']) {
        assert.equal(await sent(a, channel, 1, once('ann', '1')), true);
        assert.equal(await sent(b, channel, 'resent', once('ann', '1')), false, `the resend on the other node (${channel})`);
        assert.equal(await sent(a, channel, 'resent here', once('ann', '1')), false, `the resend on the same node (${channel})`);
        assert.equal(await sent(b, channel, 2, once('bob', '1')), true, 'the same id of another client');
        assert.equal(await sent(b, channel, 3, once('ann', '2')), true);
        assert.equal(await sent(b, channel, 4, once('ann', '3')), true);
        assert.equal(await sent(a, channel, 5, once('ann', '1')), true, 'past the 2 ids kept, 1 is forgotten');
        assert.equal(await sent(a, channel, 'resent', once('ann', '3')), false, 'still among the latest 2');
        assert.equal(await b.engine.publish(publication(channel, 6)), true, 'a publication without once');
      }
      await waitFor(() => a.host.data('on-a').length === 12, 3000, () => `12 messages (have ${a.host.data('on-a').length})`);
      await sleep(100);
      assert.deepEqual(a.host.data('on-a', '/d/once'), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(a.host.data('on-a', '/nohist/once'), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(a.host.offsets('on-a', '/d/once'), [1, 2, 3, 4, 5, 6], 'a resend takes no position');
    });

    it('names the node that holds a session, and carries a message from one node to another', async () => {
      const a = await open();
      const b = await open();
      await a.engine.addSession('held-by-a');
      assert.equal(await a.engine.ownerOf('held-by-a'), null, 'this node holds it');
      const owner = await b.engine.ownerOf('held-by-a');
      assert.ok(owner !== null, 'b sees that another node holds it');
      assert.equal(await b.engine.ownerOf('nobody'), null);
      assert.equal(await b.engine.sendToNode(owner, '{"hello":1}'), true);
      await waitFor(() => a.host.nodeMessages.length === 1, 3000, 'the message on node a');
      assert.equal(a.host.nodeMessages[0]![1], '{"hello":1}');
      assert.equal(await b.engine.sendToNode('no-such-node', 'x'), false, 'nobody listens');
    });

    it("takes a census of every node's sessions", async () => {
      const a = await open();
      const b = await open();
      a.host.described = [describedSession('on-a', 'ann')];
      b.host.described = [describedSession('on-b', null), describedSession('also-on-b', 'bob')];
      for (const { engine } of [a, b]) assert.deepEqual((await engine.census()).map((info) => info.clientId).sort(), ['also-on-b', 'on-a', 'on-b']);
    });

    it('lets any node take a presence grace mark set by another, once', async () => {
      const a = await open();
      const b = await open();
      const token = await a.engine.markLeaving('/d/room', 'erin', 5_000);
      assert.equal(await b.engine.takeLeaving('/d/room', 'erin'), true);
      assert.equal(await a.engine.takeLeaving('/d/room', 'erin', token), false);
      // Back on b and gone again: a's old token does not take b's newer mark.
      const newer = await b.engine.markLeaving('/d/room', 'erin', 5_000);
      assert.equal(await a.engine.takeLeaving('/d/room', 'erin', token), false);
      assert.equal(await a.engine.takeLeaving('/d/room', 'erin', newer), true);
    });

    it("knows the user of another node's session, until it ends", async () => {
      const a = await open();
      const b = await open();
      await a.engine.addSession('user-on-a', 'alice');
      assert.deepEqual(await b.engine.usersOf(['user-on-a']), ['alice']);
      await a.engine.removeSession('user-on-a');
      assert.deepEqual(await b.engine.usersOf(['user-on-a']), [null]);
    });

    it('delivers with sendTo once per idempotency key, whichever node the retry is made on; a key that reached no session is not kept', async () => {
      const a = await open();
      const b = await open();
      await a.engine.addSession('keyed-on-a');
      const keyed = (node: { engine: Engine }, clientId: string, data: unknown, id: string): Promise<boolean> => node.engine.sendTo(clientId, { ...publication('/d/private', data), once: { client: API_DELIVERER, id, keep: 100, forMs: 60_000 } });
      assert.equal(await a.engine.sendTo('keyed-on-a', publication('/d/private', 'no key')), true);
      assert.equal(await b.engine.sendTo('keyed-on-a', publication('/d/private', 'no key')), true, 'without a key, each is sent');
      assert.equal(await keyed(b, 'keyed-on-a', 1, 'k1'), true);
      assert.equal(await keyed(a, 'keyed-on-a', 'again', 'k1'), true, 'the retry on the other node, said delivered');
      assert.equal(await keyed(b, 'keyed-on-a', 'again', 'k1'), true, 'and on the same node');
      assert.equal(await keyed(b, 'not-yet', 'lost', 'k2'), false, 'no such session');
      await a.engine.addSession('not-yet');
      assert.equal(await keyed(b, 'not-yet', 2, 'k2'), true, 'the key was not kept: its retry is sent');
      await waitFor(() => a.host.data('keyed-on-a').length === 3 && a.host.data('not-yet').length === 1, 3000, 'the deliveries on node a');
      await sleep(100);
      assert.deepEqual(a.host.data('keyed-on-a'), ['no key', 'no key', 1]);
      assert.deepEqual(a.host.data('not-yet'), [2]);
    });

    it('reaches a session on another node with sendTo, and says false once it ended there', async () => {
      const a = await open();
      const b = await open();
      await a.engine.addSession('only-on-a');
      assert.equal(await b.engine.sendTo('only-on-a', publication('/d/private', 'psst')), true);
      await waitFor(() => a.host.data('only-on-a').length === 1, 3000, 'the message on node a');
      assert.deepEqual(a.host.data('only-on-a'), ['psst']);
      await a.engine.removeSession('only-on-a');
      assert.equal(await b.engine.sendTo('only-on-a', publication('/d/private', 'late')), false);
      assert.equal(await b.engine.sendTo('nobody', publication('/d/private', 'lost')), false);
    });

    it('recovers on one node what was published on another while the other keeps publishing: an exact seam', async () => {
      const a = await open();
      const b = await open();
      const total = 300;
      let published = 0;
      const publisher = (async () => {
        while (published < total) {
          const batch: Array<unknown> = [];
          for (let i = 0; i < 6 && published < total; i++) batch.push(b.engine.publish(publication('/d/seam', ++published)));
          await Promise.all(batch);
        }
      })();
      const sessions: Array<{ id: string; since: Position }> = [];
      for (let round = 0; round < 5; round++) {
        await waitFor(() => published > 30 + round * 50, 10_000, 'the publisher to get ahead');
        const page = await a.engine.history('/d/seam', { limit: 0 });
        const since = { epoch: page!.position!.epoch, offset: Math.max(0, page!.position!.offset - 20) };
        const id = `moved${round}`;
        sessions.push({ id, since });
        const outcome = await a.engine.subscribe(id, '/d/seam', [{ channel: '/d/seam', since }]);
        assert.equal(outcome.recovered[0]?.recovered, true);
      }
      await publisher;
      for (const { id, since } of sessions) {
        await waitFor(() => a.host.offsets(id, '/d/seam').at(-1) === total, 5000, `${id} to catch up`);
        const expected = Array.from({ length: total - since.offset }, (_, i) => since.offset + 1 + i);
        assert.deepEqual(a.host.offsets(id, '/d/seam'), expected, `${id}: no gap, no duplicate`);
      }
    });
  });
}
