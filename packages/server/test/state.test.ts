/**
 * State channels on the server: `server.state()` and its handle (get, version, update), the load
 * and save hooks, the patches published as `{epoch, version, patch}`, /service/state (snapshots
 * and proposals, with rebasing and conflicts), the publish guard, history recovery of missed
 * patches, the real CometD client, and closing.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { adapt } from 'cometd-nodejs-client';
import { CometD, type Message as CometDMessage } from 'cometd';
import { StateError, applyPatch, type JsonValue, type Patch } from '@perihelion/state';
import type { Position } from '@perihelion/protocol';
import { MemoryEngine, PerihelionError, type Message } from '../src/index.js';
import type { ProposalCheck, StateChannel, StateOptions } from '../src/state/state-channel.js';
import { WsPeer, errorOf, postForBytes, startServer, waitFor, watchStalls, type Msg, type TestServer } from './helpers.js';

adapt();

const TEST_TIMEOUT = { timeout: 15_000 };
const SERVICE = '/service/state';

/** A WebSocket session: handshaken, connected (connects re-sent as they are answered). */
interface Peer {
  peer: WsPeer;
  clientId: string;
  /** Data of the messages delivered on `channel`, in arrival order. */
  data(channel: string): Msg[];
  subscribe(subscription: string | string[], ext?: Msg): Promise<Msg>;
  /** Publishes to /service/state and resolves to the answer: {successful: true, data} or the refusal. */
  ask(request: Msg): Promise<Msg>;
  publish(channel: string, data: unknown): Promise<Msg>;
}

async function openPeer(wsUrl: string, peers: WsPeer[]): Promise<Peer> {
  const peer = await WsPeer.open(wsUrl);
  peers.push(peer);
  const reply = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
  assert.equal(reply.successful, true, `handshake: ${JSON.stringify(reply)}`);
  const clientId = reply.clientId as string;
  await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  let seq = 0;
  return {
    peer,
    clientId,
    data: (channel) => peer.received.filter((m) => m.channel === channel && m.data !== undefined && m.successful === undefined).map((m) => m.data as Msg),
    subscribe: (subscription, ext) => peer.request({ channel: '/meta/subscribe', clientId, subscription, ...(ext ? { ext } : {}) }),
    publish: (channel, data) => peer.request({ channel, clientId, data }),
    async ask(request) {
      const id = `ask${++seq}`;
      peer.send([{ channel: SERVICE, clientId, id, data: request }]);
      // A refusal is the only reply; an answer follows the publish acknowledgement, carrying data.
      return peer.next((m) => m.id === id && (m.successful === false || m.data !== undefined), `the answer to ${JSON.stringify(request)}`, 5000);
    },
  };
}

/** Asserts a Bayeux refusal: successful false, with this code. Returns the parsed error. */
function refused(reply: Msg, code: number, what = ''): ReturnType<typeof errorOf> {
  assert.equal(reply.successful, false, `${what} should be refused: ${JSON.stringify(reply)}`);
  assert.equal(reply.data, undefined, `${what}: a refusal carries no data`);
  const error = errorOf(reply);
  assert.equal(error.code, code, `${what}: ${JSON.stringify(reply.error)}`);
  return error;
}

function answered(reply: Msg, what = ''): Msg {
  assert.equal(reply.successful, true, `${what} should be answered: ${JSON.stringify(reply)}`);
  return reply.data as Msg;
}

async function rejectsWith(promise: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof PerihelionError, `${what}: ${String(error)}`);
    assert.equal(error.code, code, `${what}: ${error.message}`);
    return true;
  }, what);
}

/** Lets in-flight deliveries arrive, for checks that something was NOT delivered. */
const settle = (ms = 150): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** server.state() with any value (the refusals give it non-JSON ones), as an untyped handle. */
function makeState(t: TestServer, channel: string, initial: unknown, options: StateOptions = {}): Promise<StateChannel> {
  return t.server.state(channel, initial as JsonValue, options) as Promise<unknown> as Promise<StateChannel>;
}

/** Records the messages the server published on `channel` (server.on('publish')). */
function published(t: TestServer, channel: string): { messages: Msg[]; stop: () => void } {
  const messages: Msg[] = [];
  const stop = t.server.on('publish', (message: Message) => {
    if (message.channel === channel) messages.push(message.data as Msg);
  });
  return { messages, stop };
}

describe('state channels: server.state() and update()', () => {
  let t: TestServer;
  const peers: WsPeer[] = [];
  let seq = 0;
  const fresh = (name: string): string => `/st/${name}${++seq}`;

  before(async () => {
    t = await startServer();
  });
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });
  after(() => t.close());

  it('update takes a draft to change, a function returning a new value, or a value; subscribers get {epoch, version, patch} from version 1', TEST_TIMEOUT, async () => {
    const channel = fresh('forms');
    const initial = { count: 0, items: ['a'] };
    const state = await makeState(t, channel, initial);
    assert.equal(state.version, 0);
    assert.deepEqual(state.get(), { count: 0, items: ['a'] });
    const a = await openPeer(t.wsUrl, peers);
    assert.equal((await a.subscribe(channel)).successful, true);

    const p1 = await state.update((draft) => {
      (draft as { count: number }).count = 1;
    });
    assert.deepEqual(p1, [{ op: 'replace', path: '/count', value: 1 }]);
    assert.deepEqual(state.get(), { count: 1, items: ['a'] });
    assert.equal(state.version, 1);

    const p2 = await state.update((draft) => ({ ...(draft as object), items: ["a", "b"] }));
    assert.deepEqual(p2, [{ op: 'add', path: '/items/1', value: 'b' }]);
    assert.equal(state.version, 2);

    const p3 = await state.update({ count: 3, items: ['a', 'b'], title: 'x' });
    assert.equal(state.version, 3);
    assert.deepEqual(state.get(), { count: 3, items: ['a', 'b'], title: 'x' });

    await waitFor(() => a.data(channel).length === 3, 3000, 'three patches');
    const got = a.data(channel);
    assert.deepEqual(got.map((m) => m.version), [1, 2, 3]);
    assert.deepEqual(new Set(got.map((m) => m.epoch)), new Set([state.epoch]));
    assert.equal(typeof state.epoch, 'string');
    assert.ok(state.epoch.length > 0);
    assert.deepEqual(got.map((m) => m.patch), [p1, p2, p3], 'the patch update resolved to is the one published');
    for (const m of got) assert.deepEqual(Object.keys(m).sort(), ['epoch', 'patch', 'version'], 'an application update names no proposal');
    // Applying the published patches to the initial value gives the server's value.
    let replica: JsonValue = { count: 0, items: ['a'] };
    for (const m of got) replica = applyPatch(replica, m.patch as Patch);
    assert.deepEqual(replica, state.get());
    assert.deepEqual(initial, { count: 0, items: ['a'] }, 'the initial object given was not changed by updates');
  });

  it('a change that changes nothing publishes nothing and resolves to []', TEST_TIMEOUT, async () => {
    const channel = fresh('noop');
    const state = await makeState(t, channel, { n: 1, list: [1, 2] });
    const a = await openPeer(t.wsUrl, peers);
    await a.subscribe(channel);
    const sent = published(t, channel);
    try {
      assert.deepEqual(await state.update(() => {}), []);
      assert.deepEqual(await state.update((draft) => draft), []);
      assert.deepEqual(await state.update({ n: 1, list: [1, 2] }), []);
      assert.deepEqual(
        await state.update((draft) => {
          (draft as { n: number }).n = 1;
        }),
        [],
      );
      assert.equal(state.version, 0);
      await settle();
      assert.deepEqual(a.data(channel), []);
      assert.deepEqual(sent.messages, []);
      await state.update({ n: 2, list: [1, 2] });
      await waitFor(() => a.data(channel).length === 1, 3000, 'the real change');
      assert.equal(a.data(channel)[0]!.version, 1, 'no version was spent on the no-ops');
      assert.equal(sent.messages.length, 1);
    } finally {
      sent.stop();
    }
  });

  it('refuses a value that is not JSON (undefined inside, a function, NaN, a Date) and keeps the state', TEST_TIMEOUT, async () => {
    const channel = fresh('notjson');
    const state = await makeState(t, channel, { ok: true });
    await state.update({ ok: true, n: 1 });
    const sent = published(t, channel);
    try {
      const bad: Array<[string, unknown]> = [
        ['undefined inside', { ok: true, gone: undefined }],
        ['undefined in an array', { ok: true, list: [1, undefined] }],
        ['a function', { ok: true, f: () => 1 }],
        ['NaN', { ok: true, n: NaN }],
        ['Infinity', { ok: true, n: Infinity }],
        ['a Date', { ok: true, when: new Date() }],
        ['a Map', { ok: true, m: new Map() }],
        ['undefined itself', undefined],
      ];
      for (const [what, value] of bad) {
        await rejectsWith(state.update(value as never), 'ERR_INVALID_ARGUMENT', `update(${what})`);
        // (A function returning undefined changed its draft in place: that is not a refusal.)
        if (value !== undefined) await rejectsWith(state.update(() => value as never), 'ERR_INVALID_ARGUMENT', `update(() => ${what})`);
        assert.deepEqual(state.get(), { ok: true, n: 1 }, `${what}: the value is unchanged`);
        assert.equal(state.version, 1, `${what}: the version is unchanged`);
      }
      await rejectsWith(
        state.update((draft) => {
          (draft as Record<string, unknown>).when = new Date();
        }),
        'ERR_INVALID_ARGUMENT',
        'a draft given a Date',
      );
      assert.deepEqual(state.get(), { ok: true, n: 1 }, 'a refused draft change does not leak into the value');
      await settle(50);
      assert.deepEqual(sent.messages, []);
      // The channel goes on working after refusals.
      await state.update({ ok: false, n: 1 });
      assert.equal(state.version, 2);
    } finally {
      sent.stop();
    }
  });

  it('refuses an async update function, leaving the state unchanged', TEST_TIMEOUT, async () => {
    const channel = fresh('async');
    const state = await makeState(t, channel, { n: 0 });
    const sent = published(t, channel);
    try {
      await rejectsWith(
        state.update((async (draft: { n: number }) => {
          draft.n = 1;
        }) as never),
        'ERR_INVALID_ARGUMENT',
        'an async function',
      );
      assert.deepEqual(state.get(), { n: 0 });
      assert.equal(state.version, 0);
      // A function that throws rejects with its error, and the queue goes on.
      await assert.rejects(
        state.update(() => {
          throw new Error('boom');
        }),
        /boom/,
      );
      // Its own StateError too (a patch it applied that failed), not taken for a result that is not JSON.
      await assert.rejects(
        state.update((draft) => {
          applyPatch(draft as JsonValue, [{ op: 'remove', path: '/missing' }]);
        }),
        (error: Error & { code?: string }) => {
          assert.ok(error instanceof StateError, `the function's own error, got ${error.name}: ${error.message}`);
          assert.doesNotMatch(error.message, /not JSON/);
          return true;
        },
      );
      await state.update({ n: 5 });
      assert.deepEqual(state.get(), { n: 5 });
      await settle(50);
      assert.deepEqual(sent.messages.map((m) => m.version), [1]);
    } finally {
      sent.stop();
    }
  });

  it('update(fn) copies only what the change touches: the new value shares the rest with the old, which stays as it was', TEST_TIMEOUT, async () => {
    type Doc = { items: { id: number; done: boolean; tags: string[] }[]; meta: { owner: string } };
    const initial: Doc = { items: Array.from({ length: 1000 }, (_, id) => ({ id, done: false, tags: ['t'] })), meta: { owner: 'ann' } };
    const state = await makeState(t, fresh('shared'), initial as unknown as JsonValue);
    const before = state.get() as unknown as Doc;
    const patch = await state.update((draft) => {
      (draft as unknown as Doc).items[500]!.done = true;
    });
    assert.deepEqual(patch, [{ op: 'replace', path: '/items/500/done', value: true }]);
    const after = state.get() as unknown as Doc;
    assert.notEqual(after.items, before.items);
    assert.equal(after.items[499], before.items[499], 'an untouched item is the same object');
    assert.equal(after.items[500]!.tags, before.items[500]!.tags, 'an untouched part of a changed item too');
    assert.equal(after.meta, before.meta);
    assert.equal(before.items[500]!.done, false, 'the old value is not changed');
    // The next change starts from the new value.
    await state.update((draft) => void (draft as unknown as Doc).items.splice(0, 1));
    assert.equal((state.get() as unknown as Doc).items[499]!.done, true);
    assert.equal((state.get() as unknown as Doc).items.length, 999);
    // A new value made the immutable way keeps the parts it took from the state; its own are copied.
    const current = state.get() as unknown as Doc;
    const added = { id: 2000, done: false, tags: [] as string[] };
    await state.update({ ...current, items: [...current.items.slice(0, -1), added] } as unknown as JsonValue);
    const made = state.get() as unknown as Doc;
    assert.equal(made.items[10], current.items[10]);
    assert.equal(made.meta, current.meta);
    added.done = true;
    assert.equal(made.items[998]!.done, false, 'the caller’s object was copied');
  });

  it('refuses an update function that changes its draft and returns something else (draft => draft.push(x)), leaving the state unchanged', TEST_TIMEOUT, async () => {
    const list = await makeState(t, fresh('pushreturns'), [] as number[]);
    await rejectsWith(list.update((draft) => (draft as number[]).push(1) as never), 'ERR_INVALID_ARGUMENT', 'push returns a number');
    assert.deepEqual(list.get(), []);
    const counter = await makeState(t, fresh('increment'), { n: 5 });
    await rejectsWith(counter.update((draft) => (draft as { n: number }).n++ as never), 'ERR_INVALID_ARGUMENT', 'n++ returns a number');
    assert.deepEqual(counter.get(), { n: 5 });
    assert.equal(counter.version, 0);
    // Changing the draft and returning it, or returning a new value untouched, are both fine.
    await counter.update((draft) => {
      (draft as { n: number }).n = 6;
      return draft;
    });
    await counter.update((draft) => ({ n: (draft as { n: number }).n + 1 }));
    assert.deepEqual(counter.get(), { n: 7 });
  });

  it('refuses what an expression-bodied update function returns in place of a value, whether or not the draft changed this time', TEST_TIMEOUT, async () => {
    const doc = await makeState(t, fresh('slips'), { status: 'open', items: [1, 2, 3], cfg: { dark: true }, list: [] as number[] });
    type Doc = { status: string; items: number[]; cfg: { dark: boolean }; list: number[] };
    const slips: Array<[string, (draft: Doc) => unknown]> = [
      ['an assignment that changes nothing (a string)', (d) => (d.status = 'open')],
      ['a sort of a sorted list (a part of the draft)', (d) => d.items.sort()],
      ['Object.assign onto a member (a part of the draft)', (d) => Object.assign(d.cfg, { dark: true })],
      ['a splice of an empty list (an array for an object)', (d) => d.list.splice(0, 1)],
      ['a delete of nothing (a boolean)', (d) => delete (d as Partial<Doc>).status],
    ];
    for (const [what, slip] of slips) await rejectsWith(doc.update(slip as never), 'ERR_INVALID_ARGUMENT', what);
    assert.deepEqual(doc.get(), { status: 'open', items: [1, 2, 3], cfg: { dark: true }, list: [] });
    assert.equal(doc.version, 0);
    // A value of the same kind, not part of the draft, is a new value; a plain value given directly too.
    await doc.update(() => ({ status: 'closed', items: [], cfg: { dark: false }, list: [] }));
    assert.equal((doc.get() as Doc).status, 'closed');
    const counter = await makeState(t, fresh('primitive'), 5 as unknown as JsonValue);
    await counter.update((n) => (n as number) + 1);
    assert.equal(counter.get(), 6, 'a plain value replaces a plain value');
  });

  it('close() stops serving the channel: snapshots and proposals answer 405, its name may be used again', TEST_TIMEOUT, async () => {
    const channel = fresh('closed');
    const state = await makeState(t, channel, { room: 1 }, { validate: () => true });
    const a = await openPeer(t.wsUrl, peers);
    answered(await a.ask({ channel, op: 'snapshot' }));
    await state.close();
    refused(await a.ask({ channel, op: 'snapshot' }), 405, 'a snapshot of a closed channel');
    refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: [] }), 405, 'a proposal on a closed channel');
    await rejectsWith(state.update({ room: 2 }), 'ERR_SERVER_CLOSED', 'an update after close');
    const again = await makeState(t, channel, { room: 'new' });
    assert.deepEqual(answered(await a.ask({ channel, op: 'snapshot' })).value, { room: 'new' });
    assert.notEqual(again.epoch, state.epoch);
  });

  it('says a new state channel on the channel (an empty patch of its epoch): a replica of an older state takes a snapshot at once', TEST_TIMEOUT, async () => {
    const channel = fresh('announced');
    const a = await openPeer(t.wsUrl, peers);
    await a.subscribe(channel);
    const state = await makeState(t, channel, { n: 1 });
    await waitFor(() => a.data(channel).length === 1, 3000, 'the announcement');
    assert.deepEqual(a.data(channel)[0], { epoch: state.epoch, version: 0, patch: [] });
  });

  it('runs concurrent updates one at a time, in the order called', TEST_TIMEOUT, async () => {
    const channel = fresh('queue');
    const state = await makeState(t, channel, { list: [] as number[] });
    const sent = published(t, channel);
    try {
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          state.update((draft) => {
            (draft as { list: number[] }).list.push(i);
          }),
        ),
      );
      assert.deepEqual((state.get() as { list: number[] }).list, Array.from({ length: 20 }, (_, i) => i));
      assert.equal(state.version, 20);
      assert.deepEqual(sent.messages.map((m) => m.version), Array.from({ length: 20 }, (_, i) => i + 1));
    } finally {
      sent.stop();
    }
  });

  it('refuses invalid channels, meta, service and presence channels, wildcards, and a second state() on one channel', TEST_TIMEOUT, async () => {
    for (const channel of ['', 'nope', '/', '/a//b', '/st/*', '/st/**', '/meta/state', '/meta/connect', '/service/state', '/service/x', '/presence', '/presence/st/x']) {
      await rejectsWith(makeState(t, channel, {}), 'ERR_INVALID_CHANNEL', `state(${JSON.stringify(channel)})`);
    }
    const channel = fresh('twice');
    const state = await makeState(t, channel, { first: true });
    await rejectsWith(makeState(t, channel, { second: true }), 'ERR_INVALID_ARGUMENT', 'a second state() on one channel');
    assert.deepEqual(state.get(), { first: true });
    // Two at once (the second created while the first awaits its load): one wins.
    const racing = fresh('race');
    const slowLoad = (): Promise<undefined> => new Promise((resolve) => setTimeout(() => resolve(undefined), 30));
    const results = await Promise.allSettled([makeState(t, racing, { a: 1 }, { load: slowLoad }), makeState(t, racing, { b: 2 }, { load: slowLoad })]);
    assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  });

  it('refuses bad options and a non-JSON initial value', TEST_TIMEOUT, async () => {
    const bad: Array<[string, unknown]> = [
      ['rebaseWindow -1', { rebaseWindow: -1 }],
      ['rebaseWindow 1.5', { rebaseWindow: 1.5 }],
      ['rebaseWindow "10"', { rebaseWindow: '10' }],
      ['rebaseWindow 1e9', { rebaseWindow: 1e9 }],
      ['load not a function', { load: 'select * from state' }],
      ['save not a function', { save: {} }],
      ['validate not a function', { validate: true }],
      ['validateTimeout -1', { validateTimeout: -1 }],
      ['validateTimeout "1s"', { validateTimeout: '1s' }],
      ['an unknown option (a typo)', { valdate: () => true }],
      ['diff.key not a string', { diff: { key: 5 } }],
      ['diff.keys not an object', { diff: { keys: 'id' } }],
      ['an unknown diff option', { diff: { kee: 'x' } }],
      ['diff a string', { diff: 'id' }],
      ['diff null', { diff: null }],
      ['options null', null],
    ];
    for (const [what, options] of bad) {
      const channel = fresh('options');
      await rejectsWith(makeState(t, channel, {}, options as never), 'ERR_INVALID_ARGUMENT', what);
      // Nothing was registered: the channel is still free.
      await makeState(t, channel, {});
    }
    await rejectsWith(makeState(t, fresh('initial'), { d: new Date() } as never), 'ERR_INVALID_ARGUMENT', 'a Date in the initial value');
    await rejectsWith(makeState(t, fresh('initial'), undefined as never), 'ERR_INVALID_ARGUMENT', 'undefined as the initial value');
    await makeState(t, fresh('window0'), {}, { rebaseWindow: 0 });
  });

  it('keeps a copy of the initial value: changing the object given later changes nothing', TEST_TIMEOUT, async () => {
    const initial = { n: 0, list: [1] };
    const state = await makeState(t, fresh('copy'), initial);
    initial.n = 99;
    initial.list.push(2);
    assert.deepEqual(state.get(), { n: 0, list: [1] });
    assert.deepEqual(await state.update({ n: 0, list: [1, 2] }), [{ op: 'add', path: '/list/1', value: 2 }], 'diffed against the value the server holds');
  });

  it('keeps a copy of a value given to update, or returned by an update function', TEST_TIMEOUT, async () => {
    const state = await makeState(t, fresh('copy'), { list: [] as number[] });
    const given = { list: [1] };
    await state.update(given);
    given.list.push(2);
    const returned = { list: [1, 3] };
    await state.update(() => returned);
    returned.list.push(4);
    assert.deepEqual(state.get(), { list: [1, 3] });
    assert.equal(state.version, 2);
  });

  it('load giving {value, version} starts there: the next change is version + 1', TEST_TIMEOUT, async () => {
    const channel = fresh('load');
    let loads = 0;
    const state = await makeState(t, channel, { ignored: true }, {
      load: async () => {
        loads++;
        return { value: { n: 5 }, version: 7 };
      },
    });
    assert.equal(loads, 1);
    assert.deepEqual(state.get(), { n: 5 });
    assert.equal(state.version, 7);
    const a = await openPeer(t.wsUrl, peers);
    await a.subscribe(channel);
    await state.update({ n: 6 });
    assert.equal(state.version, 8);
    await waitFor(() => a.data(channel).length === 1, 3000, 'the patch');
    assert.equal(a.data(channel)[0]!.version, 8);
    // load resolving to undefined: start from the initial value, at 0.
    const fromInitial = await makeState(t, fresh('load'), { start: 1 }, { load: () => undefined });
    assert.deepEqual(fromInitial.get(), { start: 1 });
    assert.equal(fromInitial.version, 0);
    // Version 0 with a value is a valid saved state too.
    const zero = await makeState(t, fresh('load'), {}, { load: () => ({ value: [1], version: 0 }) });
    assert.deepEqual(zero.get(), [1]);
  });

  it('load resolving to something malformed makes state() reject, registering nothing', TEST_TIMEOUT, async () => {
    const malformed: Array<[string, unknown]> = [
      ['null', null],
      ['a string', '{"value":1,"version":1}'],
      ['no version', { value: { n: 1 } }],
      ['a negative version', { value: 1, version: -1 }],
      ['a fractional version', { value: 1, version: 1.5 }],
      ['a string version', { value: 1, version: '3' }],
      ['an unsafe version', { value: 1, version: 2 ** 60 }],
      ['no value', { version: 1 }],
      ['a Date value', { value: new Date(), version: 1 }],
    ];
    for (const [what, loaded] of malformed) {
      const channel = fresh('badload');
      await rejectsWith(makeState(t, channel, {}, { load: () => loaded as never }), 'ERR_INVALID_ARGUMENT', `load() giving ${what}`);
      const state = await makeState(t, channel, { fine: true });
      assert.deepEqual(state.get(), { fine: true });
    }
    // A load that throws rejects with its error.
    await assert.rejects(
      makeState(t, fresh('badload'), {}, {
        load: () => {
          throw new Error('database down');
        },
      }),
      /database down/,
    );
  });

  it('save is called with {value, version, patch}, in order, before the patch is published', TEST_TIMEOUT, async () => {
    const channel = fresh('save');
    const events: string[] = [];
    const saves: Array<{ value: unknown; version: number; patch: Patch }> = [];
    const state = await makeState(t, channel, { n: 0 }, {
      save: async (change) => {
        events.push(`save ${change.version}`);
        saves.push(structuredClone(change));
        await settle(20); // a slow database: the publish waits for it
        events.push(`saved ${change.version}`);
      },
    });
    const stop = t.server.on('publish', (message: Message) => {
      if (message.channel === channel) events.push(`publish ${(message.data as Msg).version}`);
    });
    try {
      await Promise.all([state.update({ n: 1 }), state.update({ n: 2 }), state.update({ n: 2 }), state.update({ n: 3, m: true })]);
      assert.deepEqual(events, ['save 1', 'saved 1', 'publish 1', 'save 2', 'saved 2', 'publish 2', 'save 3', 'saved 3', 'publish 3']);
      assert.deepEqual(saves, [
        { value: { n: 1 }, version: 1, patch: [{ op: 'replace', path: '/n', value: 1 }] },
        { value: { n: 2 }, version: 2, patch: [{ op: 'replace', path: '/n', value: 2 }] },
        { value: { n: 3, m: true }, version: 3, patch: [{ op: 'replace', path: '/n', value: 3 }, { op: 'add', path: '/m', value: true }] },
      ]);
    } finally {
      stop();
    }
  });

  it('a save that throws makes update reject: nothing is published, get() and version are unchanged', TEST_TIMEOUT, async () => {
    const channel = fresh('savefails');
    let fail = false;
    const saved: number[] = [];
    const state = await makeState(t, channel, { n: 0 }, {
      save: ({ version }) => {
        if (fail) throw new Error('disk full');
        saved.push(version);
      },
    });
    const a = await openPeer(t.wsUrl, peers);
    await a.subscribe(channel);
    await state.update({ n: 1 });
    fail = true;
    const sent = published(t, channel);
    try {
      await assert.rejects(state.update({ n: 2 }), /disk full/);
      await assert.rejects(
        state.update((draft) => {
          (draft as { n: number }).n = 3;
        }),
        /disk full/,
      );
      assert.deepEqual(state.get(), { n: 1 });
      assert.equal(state.version, 1);
      await settle();
      assert.deepEqual(sent.messages, []);
      assert.deepEqual(a.data(channel).map((m) => m.version), [1]);
      fail = false;
      const patch = await state.update({ n: 4 });
      assert.deepEqual(patch, [{ op: 'replace', path: '/n', value: 4 }], 'diffed against the value kept, not the one refused');
      assert.equal(state.version, 2, 'the refused changes spent no version');
      assert.deepEqual(saved, [1, 2]);
      await waitFor(() => a.data(channel).length === 2, 3000, 'the next patch');
      assert.deepEqual(a.data(channel).map((m) => m.version), [1, 2]);
    } finally {
      sent.stop();
    }
  });

  it('recovery: a client that was away gets the patches it missed replayed, in order', TEST_TIMEOUT, async () => {
    const channel = fresh('recover');
    const state = await makeState(t, channel, { list: [] as string[] });
    const first = await openPeer(t.wsUrl, peers);
    await first.subscribe(channel);
    await state.update({ list: ['seen'] });
    await waitFor(() => first.data(channel).length === 1, 3000, 'the first patch');
    const delivered = first.peer.received.find((m) => m.channel === channel && m.data !== undefined)!;
    const last = (delivered.ext as { position: Position }).position;
    assert.ok(last, 'a state patch carries a history position');
    await first.peer.close();

    const p2 = await state.update((draft) => {
      (draft as { list: string[] }).list.push('missed 1');
    });
    const p3 = await state.update((draft) => {
      (draft as { list: string[] }).list.push('missed 2');
    });

    const again = await openPeer(t.wsUrl, peers);
    const reply = await again.subscribe(channel, { recover: { [channel]: last } });
    assert.equal(reply.successful, true);
    assert.deepEqual((reply.ext as Msg).recovered, { [channel]: true });
    await state.update((draft) => {
      (draft as { list: string[] }).list.push('live');
    });
    await waitFor(() => again.data(channel).length === 3, 3000, 'replay then live');
    const got = again.data(channel);
    assert.deepEqual(got.map((m) => m.version), [2, 3, 4]);
    assert.deepEqual(got.slice(0, 2).map((m) => m.patch), [p2, p3]);
    assert.deepEqual(new Set(got.map((m) => m.epoch)), new Set([state.epoch]));
    let replica: JsonValue = { list: ['seen'] };
    for (const m of got) replica = applyPatch(replica, m.patch as Patch);
    assert.deepEqual(replica, state.get());
  });
});

describe('state channels: /service/state snapshots and the publish guard', () => {
  const peers: WsPeer[] = [];
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });

  it('on a server with no state channel yet, answers a request with 405 rather than never', TEST_TIMEOUT, async () => {
    const t = await startServer();
    try {
      const a = await openPeer(t.wsUrl, peers);
      refused(await a.ask({ channel: '/open/state', op: 'snapshot' }), 405, 'no state channel at all');
    } finally {
      await t.close();
    }
  });

  it("on a node of a cluster that cannot reach the cluster, answers requests for another node's channels and refuses publishes a replica would take for a patch with 503", TEST_TIMEOUT, async () => {
    // An engine with other nodes, its store away: which node holds a channel cannot be known.
    class AwayEngine extends MemoryEngine {
      stateHolder(): Promise<string | null> {
        return Promise.reject(new PerihelionError('ERR_ENGINE_UNAVAILABLE', 'Redis is away'));
      }
    }
    const t = await startServer({ engine: new AwayEngine() });
    try {
      const a = await openPeer(t.wsUrl, peers);
      assert.match(refused(await a.ask({ channel: '/elsewhere/state', op: 'snapshot' }), 503, 'a snapshot').message, /Redis is away/);
      const patch = await a.publish('/elsewhere/state', { epoch: 'e', version: 1, patch: [] });
      assert.equal(errorOf(patch).code, 503, JSON.stringify(patch));
      assert.match(String(patch.error), /whether this is a state channel cannot be known now/);
      assert.equal((await a.publish('/elsewhere/state', { text: 'not a patch' })).successful, true, 'other data is not asked about');
    } finally {
      await t.close();
    }
  });

  describe('in open mode', () => {
    let t: TestServer;
    let state: StateChannel;
    before(async () => {
      t = await startServer();
      state = await makeState(t, '/open/state', { items: ['a'] });
      await state.update({ items: ['a', 'b'] });
    });
    after(() => t.close());

    it('answers a snapshot with {channel, epoch, version, value}', TEST_TIMEOUT, async () => {
      const a = await openPeer(t.wsUrl, peers);
      const data = answered(await a.ask({ channel: '/open/state', op: 'snapshot' }), 'snapshot');
      assert.deepEqual(data, { channel: '/open/state', epoch: state.epoch, version: 1, value: { items: ['a', 'b'] } });
    });

    it('gives every client the one snapshot of a version, each with its own reply around it, and the next version once there is one', TEST_TIMEOUT, async () => {
      const shared = await makeState(t, '/open/shared', { n: 0, list: ['x'] });
      const [a, b] = [await openPeer(t.wsUrl, peers), await openPeer(t.wsUrl, peers)];
      // Each reply echoes its own request's id; the data is the same.
      const replies = await Promise.all(
        [a, b].map((peer, i) => {
          const id = `snapshot-${i}`;
          peer.peer.send([{ channel: SERVICE, clientId: peer.clientId, id, data: { channel: '/open/shared', op: 'snapshot' } }]);
          return peer.peer.next((m) => m.id === id && m.data !== undefined, 'the snapshot', 5000);
        }),
      );
      for (const [i, reply] of replies.entries()) {
        assert.equal(reply.id, `snapshot-${i}`);
        assert.equal(reply.successful, true);
        assert.deepEqual(reply.data, { channel: '/open/shared', epoch: shared.epoch, version: 0, value: { n: 0, list: ['x'] } });
      }
      assert.equal(shared.snapshot(), shared.snapshot(), 'one answer per version');
      await shared.update((draft) => void ((draft as { n: number }).n = 1));
      assert.deepEqual(answered(await a.ask({ channel: '/open/shared', op: 'snapshot' })), { channel: '/open/shared', epoch: shared.epoch, version: 1, value: { n: 1, list: ['x'] } });
      await shared.update({ n: 2, list: [] });
      assert.deepEqual(answered(await b.ask({ channel: '/open/shared', op: 'snapshot' })), { channel: '/open/shared', epoch: shared.epoch, version: 2, value: { n: 2, list: [] } });
    });

    it('sends a large snapshot over long-polling gzip-compressed to a client that accepts gzip, as it is to one that does not', TEST_TIMEOUT, async () => {
      const big = { rows: Array.from({ length: 2000 }, (_, i) => ({ id: i, name: `row ${i}`, done: i % 3 === 0 })) };
      const large = await makeState(t, '/open/large', big);
      const url = t.url;
      const handshake = await postForBytes(url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], {});
      const clientId = (JSON.parse(String(handshake.bytes)) as Array<{ clientId: string }>)[0]!.clientId;
      const ask = [{ channel: SERVICE, clientId, id: 'big', data: { channel: '/open/large', op: 'snapshot' } }];
      const answerIn = (text: string): unknown => (JSON.parse(text) as Msg[]).find((m) => m.data !== undefined)?.data;
      const size = JSON.stringify(big).length;

      const gzipped = await postForBytes(url, ask, { 'Accept-Encoding': 'gzip, deflate' });
      assert.equal(gzipped.headers['content-encoding'], 'gzip');
      assert.deepEqual(answerIn(String(gunzipSync(gzipped.bytes))), { channel: '/open/large', epoch: large.epoch, version: 0, value: big });
      assert.ok(gzipped.bytes.length < size / 4, `${size} bytes of value sent in ${gzipped.bytes.length}`);

      const plain = await postForBytes(url, ask, {});
      assert.equal(plain.headers['content-encoding'], undefined);
      assert.deepEqual(answerIn(String(plain.bytes)), { channel: '/open/large', epoch: large.epoch, version: 0, value: big });
    });

    it('refuses a request without a channel (400), with a bad op (400), for an unknown or wildcard channel (405)', TEST_TIMEOUT, async () => {
      const a = await openPeer(t.wsUrl, peers);
      refused(await a.ask({ op: 'snapshot' }), 400, 'no channel');
      refused(await a.ask({ channel: '/open/state' }), 400, 'no op');
      refused(await a.ask({ channel: '/open/state', op: 'delete' }), 400, 'a bad op');
      assert.deepEqual(errorOf(await a.ask({ channel: '/open/state', op: 'delete' })).args, ['/open/state']);
      refused(await a.ask({ channel: '/open/unknown', op: 'snapshot' }), 405, 'an unknown state channel');
      refused(await a.ask({ channel: '/open/*', op: 'snapshot' }), 405, 'a wildcard');
      refused(await a.ask({ channel: '/open/**', op: 'snapshot' }), 405, 'a deep wildcard');
      refused(await a.ask({ channel: '/meta/connect', op: 'snapshot' }), 405, 'a meta channel');
      refused(await a.ask({ channel: '/service/state', op: 'snapshot' }), 405, 'a service channel');
      refused(await a.ask({ channel: 42, op: 'snapshot' }), 405, 'a number');
      refused(await a.ask({ channel: 'open/state', op: 'snapshot' }), 405, 'no leading slash');
    });

    it('refuses a client publish on a state channel with 403 (open mode too); nothing reaches subscribers', TEST_TIMEOUT, async () => {
      const [sub, pub] = await Promise.all([openPeer(t.wsUrl, peers), openPeer(t.wsUrl, peers)]);
      await sub.subscribe('/open/state');
      const sent = published(t, '/open/state');
      try {
        for (const data of [{ epoch: state.epoch, version: 2, patch: [{ op: 'replace', path: '/items', value: [] }] }, 'hello', null, 0]) {
          const error = refused(await pub.publish('/open/state', data), 403, `publish ${JSON.stringify(data)}`);
          assert.deepEqual(error.args, ['/open/state']);
        }
        // The same client may publish elsewhere: the guard is for state channels only.
        assert.equal((await pub.publish('/open/other', 'fine')).successful, true);
        await settle();
        assert.deepEqual(sub.data('/open/state'), []);
        assert.deepEqual(sent.messages, []);
        assert.equal(state.version, 1);
        assert.deepEqual(state.get(), { items: ['a', 'b'] });
      } finally {
        sent.stop();
      }
    });
  });

  describe('with channel rules (open: false)', () => {
    let t: TestServer;
    before(async () => {
      t = await startServer({
        open: false,
        channels: [
          { channel: '/secret/**', subscribe: 'nobody', publish: 'anyone' },
          { channel: '/pub/**', subscribe: 'anyone', publish: 'anyone' },
        ],
      });
      await makeState(t, '/secret/plans', { launch: 'tomorrow' });
      await makeState(t, '/pub/board', { notes: [] });
    });
    after(() => t.close());

    it('refuses a snapshot of a channel the client may not subscribe to (403), leaking nothing', TEST_TIMEOUT, async () => {
      const a = await openPeer(t.wsUrl, peers);
      const reply = await a.ask({ channel: '/secret/plans', op: 'snapshot' });
      refused(reply, 403, 'a forbidden snapshot');
      assert.ok(!JSON.stringify(a.peer.received).includes('tomorrow'), 'the value never reached the client');
      // The same answer whether or not the channel holds state: its existence is not told.
      const unknown = await a.ask({ channel: '/secret/none', op: 'snapshot' });
      refused(unknown, 403, 'a forbidden channel without state');
      // Proposals are refused as well.
      refused(await a.ask({ channel: '/secret/plans', op: 'propose', epoch: 'x', base: 0, patch: [] }), 403, 'a forbidden proposal');
      // A channel the client may subscribe to is answered.
      assert.deepEqual(answered(await a.ask({ channel: '/pub/board', op: 'snapshot' })).value, { notes: [] });
    });

    it('refuses a client publish on a state channel even where a rule allows publishing', TEST_TIMEOUT, async () => {
      const a = await openPeer(t.wsUrl, peers);
      assert.equal((await a.publish('/pub/other', 'x')).successful, true, 'the rule lets clients publish under /pub');
      refused(await a.publish('/pub/board', { epoch: 'forged', version: 1, patch: [] }), 403, 'a publish on a state channel');
    });
  });
});

describe('state channels: proposals', () => {
  let t: TestServer;
  const peers: WsPeer[] = [];
  let seq = 0;
  const fresh = (name: string): string => `/prop/${name}${++seq}`;
  const checks: ProposalCheck[] = [];
  const allowAll = (check: ProposalCheck): true => {
    checks.push(check);
    return true;
  };

  before(async () => {
    t = await startServer();
  });
  afterEach(async () => {
    checks.length = 0;
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });
  after(() => t.close());

  it('are refused (403) on a channel without a validate hook', TEST_TIMEOUT, async () => {
    const channel = fresh('novalidate');
    const state = await makeState(t, channel, { n: 0 });
    const a = await openPeer(t.wsUrl, peers);
    const error = refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'replace', path: '/n', value: 1 }] }), 403);
    assert.deepEqual(error.args, [channel]);
    assert.deepEqual(state.get(), { n: 0 });
    assert.equal(state.version, 0);
  });

  it('validate returning true: applied, the canonical patch published with the proposal id and the proposer, the new version answered', TEST_TIMEOUT, async () => {
    const channel = fresh('accept');
    const state = await makeState(t, channel, { a: 1, list: ['x'] }, { validate: allowAll });
    await state.update({ a: 1, list: ['x'], b: true });
    const [sub, proposer] = await Promise.all([openPeer(t.wsUrl, peers), openPeer(t.wsUrl, peers)]);
    await sub.subscribe(channel);
    // Not canonical: remove then add of /a is one replace to the server's diff.
    const patch = [
      { op: 'remove', path: '/a' },
      { op: 'add', path: '/a', value: 2 },
      { op: 'test', path: '/b', value: true },
    ];
    const data = answered(await proposer.ask({ channel, op: 'propose', epoch: state.epoch, base: 1, patch, id: 'p-1' }), 'the proposal');
    assert.deepEqual(data, { channel, version: 2 });
    assert.deepEqual(state.get(), { a: 2, list: ['x'], b: true });
    assert.equal(state.version, 2);
    await waitFor(() => sub.data(channel).length === 1, 3000, 'the published patch');
    assert.deepEqual(sub.data(channel)[0], { epoch: state.epoch, version: 2, patch: [{ op: 'replace', path: '/a', value: 2 }], proposal: 'p-1', by: proposer.clientId });
    // validate saw the proposal, the session, and the values before and after.
    assert.equal(checks.length, 1);
    assert.equal(checks[0]!.channel, channel);
    assert.equal(checks[0]!.session.id, proposer.clientId);
    assert.deepEqual(checks[0]!.patch, patch);
    assert.deepEqual(checks[0]!.current, { a: 1, list: ['x'], b: true });
    assert.deepEqual(checks[0]!.next, { a: 2, list: ['x'], b: true });
    // Without an id: accepted too, published without `proposal`.
    const second = answered(await proposer.ask({ channel, op: 'propose', epoch: state.epoch, base: 2, patch: [{ op: 'add', path: '/list/-', value: 'y' }] }));
    assert.deepEqual(second, { channel, version: 3 });
    await waitFor(() => sub.data(channel).length === 2, 3000, 'the second patch');
    assert.deepEqual(sub.data(channel)[1], { epoch: state.epoch, version: 3, patch: [{ op: 'add', path: '/list/1', value: 'y' }], by: proposer.clientId });
  });

  it('a proposal that changes nothing is accepted at the current version and publishes nothing', TEST_TIMEOUT, async () => {
    const channel = fresh('noop');
    const state = await makeState(t, channel, { a: 1 }, { validate: allowAll });
    const sent = published(t, channel);
    try {
      const a = await openPeer(t.wsUrl, peers);
      assert.deepEqual(answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'replace', path: '/a', value: 1 }], id: 'same' })), { channel, version: 0 });
      assert.equal(state.version, 0);
      await settle(50);
      assert.deepEqual(sent.messages, []);
    } finally {
      sent.stop();
    }
  });

  it('validate returning a string refuses with that reason (403); anything else but true refuses too', TEST_TIMEOUT, async () => {
    const channel = fresh('refuse');
    const verdicts: unknown[] = ['items must be short', false, undefined, 'yes', 1, ''];
    let next = 0;
    const state = await makeState(t, channel, { text: '' }, { validate: () => verdicts[next++] as never });
    const sent = published(t, channel);
    try {
      const a = await openPeer(t.wsUrl, peers);
      const propose = (): Promise<Msg> => a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'replace', path: '/text', value: 'long' }] });
      const first = refused(await propose(), 403, 'a string verdict');
      assert.match(first.message, /items must be short/);
      assert.deepEqual(first.args, [channel]);
      for (let i = 1; i < verdicts.length; i++) refused(await propose(), 403, `verdict ${JSON.stringify(verdicts[i])}`);
      assert.deepEqual(state.get(), { text: '' });
      assert.equal(state.version, 0);
      assert.deepEqual(sent.messages, []);
    } finally {
      sent.stop();
    }
  });

  it('a validate or save hook that throws: the proposal is answered with a 500 (not left unanswered), the error reported, nothing applied', TEST_TIMEOUT, async () => {
    const errors: unknown[] = [];
    const stop = t.server.on('error', (error) => errors.push(error));
    try {
      const channel = fresh('throws');
      const state = await makeState(t, channel, { n: 0 }, {
        validate: () => {
          throw new Error('validator crashed');
        },
      });
      const a = await openPeer(t.wsUrl, peers);
      refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'replace', path: '/n', value: 1 }] }), 500, 'validate threw');
      assert.equal(state.version, 0);
      assert.ok(errors.some((e) => (e as Error).message === 'validator crashed'), 'the error reached the server\'s error event');
      await state.update({ n: 2 });
      assert.equal(state.version, 1, 'the channel still works');

      // save throwing (a database away): a 500, nothing applied; the same proposal sent again later is applied once.
      const saving = fresh('savethrows');
      let down = true;
      const saved: number[] = [];
      const db = await makeState(t, saving, { list: [] }, {
        validate: allowAll,
        save: ({ version }) => {
          if (down) throw new Error('database away');
          saved.push(version);
        },
      });
      const sent = published(t, saving);
      try {
        const proposal = { channel: saving, op: 'propose', epoch: db.epoch, base: 0, patch: [{ op: 'add', path: '/list/-', value: 'x' }], id: 'retry-me' };
        refused(await a.ask(proposal), 500, 'save threw');
        assert.deepEqual(db.get(), { list: [] });
        assert.equal(db.version, 0);
        assert.deepEqual(sent.messages, []);
        down = false;
        assert.deepEqual(answered(await a.ask(proposal)), { channel: saving, version: 1 });
        assert.deepEqual(answered(await a.ask(proposal)), { channel: saving, version: 1 });
        assert.deepEqual(db.get(), { list: ['x'] });
        assert.deepEqual(saved, [1]);
        assert.equal(sent.messages.length, 1);
      } finally {
        sent.stop();
      }
    } finally {
      stop();
    }
  });

  it('a proposal whose publish failed after it was saved is made: answered with its version, the failure reported, its resend not applied twice', TEST_TIMEOUT, async () => {
    const errors: unknown[] = [];
    const stopErrors = t.server.on('error', (error) => errors.push(error));
    const channel = fresh('publishfails');
    let failing = false;
    const removeExtension = t.server.addExtension({
      outgoing(message) {
        if (failing && message.channel === channel) throw new Error('publish failed');
        return message;
      },
    });
    try {
      const state = await makeState(t, channel, { list: [] }, { validate: allowAll });
      const a = await openPeer(t.wsUrl, peers);
      failing = true;
      const proposal = { channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'add', path: '/list/-', value: 'x' }], id: 'once-only' };
      assert.deepEqual(answered(await a.ask(proposal)), { channel, version: 1 }, 'saved and made');
      const reported = errors.find((e) => (e as PerihelionError).code === 'ERR_NOT_PUBLISHED') as PerihelionError | undefined;
      assert.match(String(reported?.message), /version 1 of .* was made and saved, but its patch could not be published.*publish failed/);
      failing = false;
      // Sent again (its answer lost, say): answered, not appended a second time.
      assert.deepEqual(answered(await a.ask(proposal)), { channel, version: 1 });
      assert.deepEqual(state.get(), { list: ['x'] });
      // The same holds for the server's own update: it resolves, the change is made.
      failing = true;
      assert.deepEqual(await state.update((draft) => void (draft as { list: string[] }).list.push('y')), [{ op: 'add', path: '/list/1', value: 'y' }]);
      assert.equal(state.version, 2);
      assert.equal(errors.filter((e) => (e as PerihelionError).code === 'ERR_NOT_PUBLISHED').length, 2);
    } finally {
      removeExtension();
      stopErrors();
    }
  });

  it('refuses a proposal id that comes back with another patch (400): another client cannot claim an id and make a proposal vanish', TEST_TIMEOUT, async () => {
    const channel = fresh('claimed');
    const state = await makeState(t, channel, { log: [] as string[] }, { validate: allowAll });
    const [victim, attacker] = await Promise.all([openPeer(t.wsUrl, peers), openPeer(t.wsUrl, peers)]);
    const append = (text: string): unknown[] => [{ op: 'add', path: '/log/-', value: text }];
    // The attacker applies a proposal under the id the victim will use next.
    assert.deepEqual(answered(await attacker.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: append('attacker'), id: 'next-id' })), { channel, version: 1 });
    const error = refused(await victim.ask({ channel, op: 'propose', epoch: state.epoch, base: 1, patch: append('important'), id: 'next-id' }), 400, 'the same id with another patch');
    assert.match(error.message, /the proposal id "next-id" was used by another proposal/);
    // The genuine resend of the first is still answered, not applied again.
    assert.deepEqual(answered(await attacker.ask({ channel, op: 'propose', epoch: state.epoch, base: 1, patch: append('attacker'), id: 'next-id' })), { channel, version: 1 });
    assert.deepEqual(state.get(), { log: ['attacker'] });
  });

  it('checks a large proposal against many changes at once, and refuses as a conflict one too large to rebase (the server is not held)', TEST_TIMEOUT, async () => {
    const channel = fresh('rebasecost');
    const records: Record<string, { n: number; m: number }> = {};
    for (let i = 0; i < 10_000; i++) records[`r${i}`] = { n: 0, m: 0 };
    const state = await makeState(t, channel, { records }, { validate: allowAll });
    const touchEveryRecord = (rounds: number): Promise<unknown> =>
      Array.from({ length: rounds }).reduce<Promise<unknown>>(
        (previous) =>
          previous.then(() =>
            state.update((draft) => {
              for (const record of Object.values((draft as typeof draft & { records: typeof records }).records)) record.n++;
            }),
          ),
        Promise.resolve(),
      );
    await touchEveryRecord(5);
    const a = await openPeer(t.wsUrl, peers);
    // 9 000 operations on values nothing changed, 5 versions behind, each version having changed
    // 10 000 values: comparing every pair took seconds; the check looks up each path instead.
    const patch = Array.from({ length: 9000 }, (_, i) => ({ op: 'test', path: `/records/r${i}/m`, value: 0 }));
    const stalls = watchStalls();
    try {
      assert.deepEqual(answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch })), { channel, version: 5 }, 'rebased (it changes nothing)');
      assert.ok(stalls.longest() < 1000, `the event loop stalled ${Math.round(stalls.longest())} ms`);
      // One operation on a value that changed is still found.
      refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 4, patch: [{ op: 'replace', path: '/records/r7/n', value: -1 }] }), 409, 'a changed value');
      // 25 versions behind, 9 000 operations pass the bound: refused without the check.
      await touchEveryRecord(20);
      stalls.reset();
      const error = refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch }), 409, 'too large to rebase');
      assert.match(error.message, /a proposal of 9000 operations is too large to rebase over 25 changes/);
      assert.ok(stalls.longest() < 1000, `the event loop stalled ${Math.round(stalls.longest())} ms`);
    } finally {
      stalls.stop();
    }
  });

  it('a validate that throws, or does not decide within validateTimeout, is answered 500 and reported; the changes behind it go on', TEST_TIMEOUT, async () => {
    const errors: unknown[] = [];
    const stopErrors = t.server.on('error', (error) => errors.push(error));
    try {
      const channel = fresh('hooks');
      const state = await makeState(t, channel, { n: 0 }, {
        validateTimeout: 200,
        validate: ({ next }) => {
          const n = (next as { n: number }).n;
          if (n === 1) throw new TypeError('validate bug');
          if (n === 2) return new Promise<boolean>(() => {}); // never decides
          return true;
        },
      });
      const a = await openPeer(t.wsUrl, peers);
      const propose = (n: number): Promise<Msg> => a.ask({ channel, op: 'propose', epoch: state.epoch, base: state.version, patch: [{ op: 'replace', path: '/n', value: n }] });
      refused(await propose(1), 500, 'validate threw');
      assert.ok(errors.some((e) => (e as Error).message === 'validate bug'), 'the throw is reported');
      const started = Date.now();
      refused(await propose(2), 500, 'validate never decided');
      assert.ok(Date.now() - started >= 190, 'refused once validateTimeout passed');
      assert.ok(errors.some((e) => (e as PerihelionError).code === 'ERR_HOOK_TIMEOUT'), 'the timeout is reported');
      // Neither holds the channel: the next proposal and the server's own update go through.
      assert.deepEqual(answered(await propose(3)), { channel, version: 1 });
      await state.update({ n: 4 });
      assert.equal(state.version, 2);
    } finally {
      stopErrors();
    }
  });

  it('refuses an invalid patch (400): an unknown op, a path that does not exist, a failed test', TEST_TIMEOUT, async () => {
    const channel = fresh('invalid');
    const state = await makeState(t, channel, { a: { b: 1 }, list: [1] }, { validate: allowAll });
    const a = await openPeer(t.wsUrl, peers);
    const patches: Array<[string, unknown[]]> = [
      ['an unknown op', [{ op: 'bogus', path: '/a' }]],
      ['an op that is not an object', ['replace']],
      ['no path', [{ op: 'replace', value: 1 }]],
      ['a path that does not exist', [{ op: 'replace', path: '/missing/x', value: 1 }]],
      ['a remove of nothing', [{ op: 'remove', path: '/a/c' }]],
      ['an index out of range', [{ op: 'replace', path: '/list/5', value: 2 }]],
      ['a failed test', [{ op: 'test', path: '/a/b', value: 2 }, { op: 'replace', path: '/a/b', value: 3 }]],
      ['a non-JSON value', [{ op: 'add', path: '/x' }]],
    ];
    for (const [what, patch] of patches) {
      const error = refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch }), 400, what);
      assert.deepEqual(error.args, [channel]);
    }
    assert.deepEqual(checks, [], 'validate was never asked');
    assert.deepEqual(state.get(), { a: { b: 1 }, list: [1] });
    assert.equal(state.version, 0);
  });

  it('refuses a malformed proposal (400): no epoch, base not a whole number, patch not an array, a bad id', TEST_TIMEOUT, async () => {
    const channel = fresh('malformed');
    const state = await makeState(t, channel, { n: 0 }, { validate: allowAll });
    const a = await openPeer(t.wsUrl, peers);
    const good = { channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'replace', path: '/n', value: 1 }] };
    const cases: Array<[string, Msg]> = [
      ['no epoch', { ...good, epoch: undefined }],
      ['a numeric epoch', { ...good, epoch: 1 }],
      ['no base', { ...good, base: undefined }],
      ['a string base', { ...good, base: '0' }],
      ['a fractional base', { ...good, base: 0.5 }],
      ['a negative base', { ...good, base: -1 }],
      ['no patch', { ...good, patch: undefined }],
      ['a patch object', { ...good, patch: { op: 'replace', path: '/n', value: 1 } }],
      ['an empty id', { ...good, id: '' }],
      ['a numeric id', { ...good, id: 7 }],
      ['an id too long', { ...good, id: 'x'.repeat(65) }],
    ];
    for (const [what, request] of cases) refused(await a.ask(request), 400, what);
    assert.equal(state.version, 0);
    // An id of 64 characters is fine.
    assert.deepEqual(answered(await a.ask({ ...good, id: 'x'.repeat(64) })), { channel, version: 1 });
  });

  it('rebases a proposal on an older version when what it touches did not change since', TEST_TIMEOUT, async () => {
    const channel = fresh('rebase');
    const state = await makeState(t, channel, { a: 1, b: 1, list: ['x'] }, { validate: allowAll });
    const base = state.version;
    await state.update({ a: 1, b: 2, list: ['x'] });
    await state.update({ a: 1, b: 3, list: ['x'] });
    const a = await openPeer(t.wsUrl, peers);
    await a.subscribe(channel);
    const data = answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base, patch: [{ op: 'replace', path: '/a', value: 9 }], id: 'stale-ok' }));
    assert.deepEqual(data, { channel, version: 3 });
    assert.deepEqual(state.get(), { a: 9, b: 3, list: ['x'] }, 'applied on the current value: b keeps its newer value');
    // validate was asked about the current value, not the base's.
    assert.deepEqual(checks[0]!.current, { a: 1, b: 3, list: ['x'] });
    await waitFor(() => a.data(channel).length === 1, 3000, 'the rebased patch');
    assert.deepEqual(a.data(channel)[0]!.patch, [{ op: 'replace', path: '/a', value: 9 }]);
    // An append to a list goes through from an older base as well.
    await state.update((draft) => {
      (draft as { list: string[] }).list.push('y');
    });
    assert.deepEqual(answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 3, patch: [{ op: 'add', path: '/list/-', value: 'z' }] })), { channel, version: 5 });
    assert.deepEqual((state.get() as { list: string[] }).list, ['x', 'y', 'z']);
  });

  it('refuses as a conflict (409) a proposal on an older version touching what changed since', TEST_TIMEOUT, async () => {
    const channel = fresh('conflict');
    const state = await makeState(t, channel, { a: 1, obj: { k: 1, j: 1 } }, { validate: allowAll });
    await state.update({ a: 2, obj: { k: 1, j: 1 } });
    await state.update({ a: 2, obj: { k: 1, j: 2 } });
    const a = await openPeer(t.wsUrl, peers);
    const cases: Array<[string, number, unknown[]]> = [
      ['the same path', 0, [{ op: 'replace', path: '/a', value: 5 }]],
      ['a path inside what changed (base 1)', 1, [{ op: 'replace', path: '/obj/j', value: 5 }]],
      ['a path above what changed', 1, [{ op: 'replace', path: '/obj', value: {} }]],
      ['the root', 0, [{ op: 'replace', path: '', value: {} }]],
      ['a test of what changed', 0, [{ op: 'test', path: '/a', value: 1 }, { op: 'add', path: '/c', value: 1 }]],
      ['a move from what changed', 0, [{ op: 'move', from: '/a', path: '/c' }]],
    ];
    for (const [what, base, patch] of cases) {
      const error = refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base, patch }), 409, what);
      assert.deepEqual(error.args, [channel]);
    }
    assert.deepEqual(state.get(), { a: 2, obj: { k: 1, j: 2 } });
    assert.equal(state.version, 2);
    // A sibling that did not change is fine from base 1.
    answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 1, patch: [{ op: 'replace', path: '/obj/k', value: 7 }] }), 'an untouched sibling');
  });

  it('an insert into an array makes a later proposal on one of its elements a conflict (the indexes moved)', TEST_TIMEOUT, async () => {
    const channel = fresh('indexes');
    const state = await makeState(t, channel, { todos: [{ t: 'a', done: false }, { t: 'b', done: false }] }, { validate: allowAll });
    const base = state.version;
    // Another change inserts at the front: what was /todos/1 is /todos/2 now.
    await state.update((draft) => {
      (draft as { todos: unknown[] }).todos.unshift({ t: 'new', done: false });
    });
    const a = await openPeer(t.wsUrl, peers);
    refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base, patch: [{ op: 'replace', path: '/todos/1/done', value: true }] }), 409, 'an edit by a moved index');
    refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base, patch: [{ op: 'remove', path: '/todos/0' }] }), 409, 'a remove by a moved index');
    assert.deepEqual((state.get() as { todos: Array<{ done: boolean }> }).todos.map((x) => x.done), [false, false, false], 'b was not ticked, nor anything else');
    // The same edit on the current version is fine.
    answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: state.version, patch: [{ op: 'replace', path: '/todos/2/done', value: true }] }));
    assert.deepEqual(state.get(), { todos: [{ t: 'new', done: false }, { t: 'a', done: false }, { t: 'b', done: true }] });
  });

  it('refuses as a conflict (409) a base older than rebaseWindow, or of another epoch; a base ahead of the server is a 400', TEST_TIMEOUT, async () => {
    const channel = fresh('window');
    const state = await makeState(t, channel, { a: 0, b: 0 }, { validate: allowAll, rebaseWindow: 2 });
    for (let i = 1; i <= 3; i++) await state.update({ a: 0, b: i });
    const a = await openPeer(t.wsUrl, peers);
    const untouched = [{ op: 'replace', path: '/a', value: 1 }];
    refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch: untouched }), 409, 'three versions behind with two kept');
    refused(await a.ask({ channel, op: 'propose', epoch: 'another-epoch', base: 3, patch: untouched }), 409, 'another epoch');
    refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 4, patch: untouched }), 400, 'a base ahead of the server');
    assert.equal(state.version, 3);
    assert.deepEqual(answered(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 1, patch: untouched })), { channel, version: 4 }, 'two versions behind is within the window');

    const none = fresh('window0');
    const strict = await makeState(t, none, { a: 0, b: 0 }, { validate: allowAll, rebaseWindow: 0 });
    await strict.update({ a: 0, b: 1 });
    refused(await a.ask({ channel: none, op: 'propose', epoch: strict.epoch, base: 0, patch: untouched }), 409, 'rebaseWindow 0: any older base');
    answered(await a.ask({ channel: none, op: 'propose', epoch: strict.epoch, base: 1, patch: untouched }), 'rebaseWindow 0: the current base');
  });

  it('a malformed patch on an older base is a 400 too, not a server error', TEST_TIMEOUT, async () => {
    const channel = fresh('stale-malformed');
    const state = await makeState(t, channel, { a: 0, b: 0 }, { validate: allowAll });
    await state.update({ a: 0, b: 1 });
    const a = await openPeer(t.wsUrl, peers);
    for (const patch of [[{ op: 'replace', value: 1 }], [null], ['replace'], [{ op: 'move', path: '/c' }]]) {
      refused(await a.ask({ channel, op: 'propose', epoch: state.epoch, base: 0, patch }), 400, `stale ${JSON.stringify(patch)}`);
    }
    assert.equal(state.version, 1);
  });

  it('applies a proposal id once: sent again, it is answered with the same version and published once', TEST_TIMEOUT, async () => {
    const channel = fresh('once');
    const state = await makeState(t, channel, { list: [] as string[] }, { validate: allowAll });
    const [sub, a, b] = await Promise.all([openPeer(t.wsUrl, peers), openPeer(t.wsUrl, peers), openPeer(t.wsUrl, peers)]);
    await sub.subscribe(channel);
    const proposal = { channel, op: 'propose', epoch: state.epoch, base: 0, patch: [{ op: 'add', path: '/list/-', value: 'once' }], id: 'dup-1' };
    assert.deepEqual(answered(await a.ask(proposal)), { channel, version: 1 });
    assert.deepEqual(answered(await a.ask(proposal)), { channel, version: 1 }, 'the resend');
    await state.update({ list: ['once', 'server'] });
    // Resent later (its answer lost, and its session too): still the version it was applied at.
    assert.deepEqual(answered(await b.ask(proposal)), { channel, version: 1 }, 'a resend from another session');
    // Two copies at once.
    const twice = { ...proposal, base: 2, id: 'dup-2', patch: [{ op: 'add', path: '/list/-', value: 'twice' }] };
    const [r1, r2] = await Promise.all([a.ask(twice), a.ask(twice)]);
    assert.deepEqual([answered(r1), answered(r2)], [{ channel, version: 3 }, { channel, version: 3 }]);
    assert.deepEqual(state.get(), { list: ['once', 'server', 'twice'] });
    assert.equal(checks.length, 2, 'validate asked once per id');
    await waitFor(() => sub.data(channel).length === 3, 3000, 'three patches');
    await settle();
    assert.deepEqual(sub.data(channel).map((m) => [m.version, m.proposal]), [[1, 'dup-1'], [2, undefined], [3, 'dup-2']]);
  });
});

describe('state channels with the CometD client', () => {
  let t: TestServer;
  const clients: CometD[] = [];
  before(async () => {
    t = await startServer();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((cometd) => new Promise((resolve) => (cometd.isDisconnected() ? resolve(null) : cometd.disconnect(resolve)))));
  });
  after(() => t.close());

  for (const transport of ['websocket', 'long-polling'] as const) {
    it(`receives the patches as ordinary messages and gets a snapshot through remoteCall and publish (${transport})`, TEST_TIMEOUT, async () => {
      const channel = `/cometd-state/${transport}`;
      const state = await makeState(t, channel, { title: 'start', items: [] as string[] });
      await state.update({ title: 'v1', items: [] });
      const cometd = new CometD();
      clients.push(cometd);
      if (transport === 'long-polling') cometd.unregisterTransport('websocket');
      cometd.configure({ url: t.url, logLevel: 'warn' });
      await new Promise<void>((resolve, reject) => cometd.handshake((reply) => (reply.successful ? resolve() : reject(new Error(JSON.stringify(reply))))));
      assert.equal(cometd.getTransport()?.type, transport);
      const messages: CometDMessage[] = [];
      await new Promise<void>((resolve, reject) =>
        cometd.subscribe(channel, (message) => messages.push(message), (reply) => (reply.successful ? resolve() : reject(new Error(JSON.stringify(reply))))),
      );

      const snapshot = await new Promise<CometDMessage>((resolve) => cometd.remoteCall('state', { channel, op: 'snapshot' }, 5000, resolve));
      assert.equal(snapshot.successful, true, JSON.stringify(snapshot));
      assert.deepEqual(snapshot.data, { channel, epoch: state.epoch, version: 1, value: { title: 'v1', items: [] } });

      const p2 = await state.update((draft) => {
        (draft as { items: string[] }).items.push('one');
      });
      const p3 = await state.update((draft) => {
        (draft as { title: string }).title = 'v3';
      });
      await waitFor(() => messages.length === 2, 5000, 'two patches');
      assert.deepEqual(messages.map((m) => m.channel), [channel, channel]);
      assert.deepEqual(messages.map((m) => m.data), [
        { epoch: state.epoch, version: 2, patch: p2 },
        { epoch: state.epoch, version: 3, patch: p3 },
      ]);
      // The snapshot followed by the patches is the server's value.
      let replica = (snapshot.data as { value: JsonValue }).value;
      for (const m of messages) replica = applyPatch(replica, (m.data as { patch: Patch }).patch);
      assert.deepEqual(replica, state.get());

      // A plain publish to /service/state: acknowledged, then the answer on a listener of the service channel.
      const answers: CometDMessage[] = [];
      cometd.addListener(SERVICE, (message) => answers.push(message));
      const ack = await new Promise<CometDMessage>((resolve) => cometd.publish(SERVICE, { channel, op: 'snapshot' }, resolve));
      assert.equal(ack.successful, true, JSON.stringify(ack));
      await waitFor(() => answers.some((m) => m.data !== undefined), 5000, 'the snapshot answer');
      assert.deepEqual(answers.find((m) => m.data !== undefined)!.data, { channel, epoch: state.epoch, version: 3, value: { title: 'v3', items: ['one'] } });

      // The CometD client cannot publish on the state channel either.
      const refusal = await new Promise<CometDMessage>((resolve) => cometd.publish(channel, { epoch: state.epoch, version: 4, patch: [] }, resolve));
      assert.equal(refusal.successful, false);
      assert.match(String(refusal.error), /^403:/);
    });
  }
});

describe('state channels when the server closes', () => {
  it('stop taking updates: update after close rejects, the value stays', TEST_TIMEOUT, async () => {
    const t = await startServer();
    const saves: number[] = [];
    const state = await makeState(t, '/closing/state', { n: 0 }, { save: ({ version }) => void saves.push(version) });
    await state.update({ n: 1 });
    // One in flight when close begins finishes.
    const pending = state.update({ n: 2 });
    await t.close();
    await pending;
    assert.equal(state.version, 2);
    await rejectsWith(state.update({ n: 3 }), 'ERR_SERVER_CLOSED', 'update after close');
    await rejectsWith(state.update(() => ({ n: 4 })), 'ERR_SERVER_CLOSED', 'update(fn) after close');
    assert.deepEqual(state.get(), { n: 2 });
    assert.equal(state.version, 2);
    assert.deepEqual(saves, [1, 2], 'nothing saved after close');
    await assert.rejects(makeState(t, '/closing/other', {}), PerihelionError, 'no new state channel on a closed server');
  });
});
