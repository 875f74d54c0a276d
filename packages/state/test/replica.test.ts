/**
 * Replica unit tests with a client that answers in memory: what `propose` does with a change
 * that cannot be made here (a patch that does not apply, a draft that is not JSON).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ProposalError, StateError, applyPatch, clone, replicate, type ReplicaClient } from '../src/index.js';

/** A client whose snapshot is `value` at version 3, and which records the requests made. */
function fakeClient(value: unknown): ReplicaClient & { requests: unknown[] } {
  const requests: unknown[] = [];
  return {
    requests,
    subscribe: () => Promise.resolve({ unsubscribe: () => Promise.resolve() }),
    request: (_channel, data) => {
      requests.push(data);
      return Promise.resolve({ channel: '/doc', epoch: 'e1', version: 3, value });
    },
  };
}

describe('Replica.propose', () => {
  it('rejects (never throws) a patch that does not apply here, sending nothing and leaving the value', async () => {
    const client = fakeClient({ items: ['a'] });
    const replica = await replicate(client, '/doc');
    const changes: unknown[] = [];
    replica.onChange((change) => changes.push(change));
    let outcome: Promise<number> | undefined;
    assert.doesNotThrow(() => (outcome = replica.propose([{ op: 'replace', path: '/missing', value: 1 }])));
    await assert.rejects(outcome!, (error: unknown) => error instanceof ProposalError && error.cause instanceof StateError && /missing/.test(error.message));
    assert.deepEqual(replica.value, { items: ['a'] });
    assert.equal(replica.pendingCount, 0);
    assert.deepEqual(changes, []);
    assert.equal(client.requests.length, 1, 'only the snapshot was asked for');
  });

  it('rejects a draft function that leaves something JSON cannot hold, naming where', async () => {
    const replica = await replicate(fakeClient({ title: 'x' }), '/doc');
    let outcome: Promise<number> | undefined;
    assert.doesNotThrow(() => (outcome = replica.propose((draft) => void ((draft as Record<string, unknown>)['title'] = undefined))));
    await assert.rejects(outcome!, (error: unknown) => error instanceof ProposalError && error.cause instanceof StateError && /\/title/.test(error.message));
    assert.deepEqual(replica.value, { title: 'x' });
  });

  it('rejects a draft function that throws, with its error as the cause', async () => {
    const replica = await replicate(fakeClient({ n: 1 }), '/doc');
    const boom = new Error('boom');
    let outcome: Promise<number> | undefined;
    assert.doesNotThrow(() => (outcome = replica.propose(() => { throw boom; })));
    await assert.rejects(outcome!, (error: unknown) => error instanceof ProposalError && error.cause === boom);
    assert.deepEqual(replica.value, { n: 1 });
  });
});

describe('Replica.propose: mistakes refused at once, with a reason', () => {
  it('a draft function that changes its draft and returns something else (draft => draft.list.push(x))', async () => {
    const client = fakeClient({ list: [1], n: 5 });
    const replica = await replicate(client, '/doc');
    for (const change of [(draft: unknown) => (draft as { list: number[] }).list.push(2), (draft: unknown) => (draft as { n: number }).n++]) {
      await assert.rejects(replica.propose(change as never), (error: unknown) => error instanceof ProposalError && /changed its draft and also returned \d/.test(error.message));
    }
    assert.deepEqual(replica.value, { list: [1], n: 5 });
    assert.equal(client.requests.length, 1, 'nothing was sent');
  });

  it('an async draft function, and a patch that is not a list of operations', async () => {
    const client = fakeClient({ n: 1 });
    const replica = await replicate(client, '/doc');
    await assert.rejects(
      replica.propose((async (draft: { n: number }) => void (draft.n = 2)) as never),
      (error: unknown) => error instanceof ProposalError && /must change its draft synchronously/.test(error.message),
    );
    await assert.rejects(
      replica.propose({ op: 'replace', path: '/n', value: 2 } as never),
      (error: unknown) => error instanceof ProposalError && /a JSON Patch \(an array of operations\)/.test(error.message),
    );
    assert.deepEqual(replica.value, { n: 1 });
    assert.equal(client.requests.length, 1);
  });
});

describe('Replica: what it tells its listeners', () => {
  it("after its own proposal is accepted, the patch a listener gets turns the previous value into the new one", async () => {
    const s = scriptedClient({ epoch: 'e1', version: 0, value: { list: ['a'], n: 0 } });
    const replica = await replicate(s.client, '/doc');
    let mirror = clone(replica.value);
    replica.onChange((change) => {
      mirror = applyPatch(mirror, change.patch);
      assert.deepEqual(mirror, change.value, `${change.cause}: the patch gives the value`);
    });
    const accepted = replica.propose((draft) => void (draft as { list: string[] }).list.push('b'));
    while (s.proposals.length === 0) await settled();
    const id = (s.proposals[0]!.data as { id: string }).id;
    s.deliver({ epoch: 'e1', version: 1, patch: [{ op: 'add', path: '/list/1', value: 'b' }], proposal: id });
    s.proposals[0]!.answer(1);
    assert.equal(await accepted, 1);
    s.deliver({ epoch: 'e1', version: 2, patch: [{ op: 'replace', path: '/n', value: 5 }] });
    assert.deepEqual(mirror, { list: ['a', 'b'], n: 5 });
    assert.deepEqual(replica.value, mirror);
  });

  it('refuses what an expression-bodied draft function returns in place of a value', async () => {
    const client = fakeClient({ status: 'open', items: [1, 2] });
    const replica = await replicate(client, '/doc');
    for (const slip of [(d: { status: string }) => (d.status = 'open'), (d: { items: number[] }) => d.items.sort()]) {
      await assert.rejects(replica.propose(slip as never), (error: unknown) => error instanceof ProposalError && /in place of the whole value|a part of its draft/.test(error.message));
    }
    assert.deepEqual(replica.value, { status: 'open', items: [1, 2] });
    assert.equal(client.requests.length, 1, 'nothing was sent');
  });
});

describe('Replica: ids, failures, and a start that fails', () => {
  it('gives each proposal an id of 128 random bits (another client cannot guess the next)', async () => {
    const ids: string[] = [];
    const client: ReplicaClient = {
      subscribe: () => Promise.resolve({ unsubscribe: () => Promise.resolve() }),
      request: (_channel, data) => {
        const request = data as { op: string; id?: string };
        if (request.op === 'snapshot') return Promise.resolve({ channel: '/doc', epoch: 'e1', version: 0, value: { n: 0 } });
        ids.push(request.id!);
        return Promise.resolve({ version: ids.length });
      },
    };
    const replica = await replicate(client, '/doc');
    // Sent one after another as each is answered (they settle when their patches come: not here).
    const outcomes = Array.from({ length: 20 }, (_, i) => replica.propose([{ op: 'replace', path: '/n', value: i + 1 }]).catch(() => {}));
    while (ids.length < 20) await new Promise((resolve) => setImmediate(resolve));
    await replica.close();
    await Promise.all(outcomes);
    assert.equal(new Set(ids).size, 20);
    for (const id of ids) assert.match(id, /^[0-9a-z]{28}$/);
    // Nothing shared between consecutive ids (a counter after a common prefix would be).
    for (let i = 1; i < ids.length; i++) assert.notEqual(ids[i]!.slice(0, 7), ids[i - 1]!.slice(0, 7));
  });

  it('a proposal the server answers with a failure (500) is sent three times in all, then rejected and rolled back', async () => {
    let proposals = 0;
    const failure = Object.assign(new Error('500:/doc:the server failed to decide on the proposal'), { code: 'bayeux', bayeuxCode: 500 });
    const client: ReplicaClient = {
      subscribe: () => Promise.resolve({ unsubscribe: () => Promise.resolve() }),
      request: (_channel, data) => {
        if ((data as { op: string }).op === 'snapshot') return Promise.resolve({ channel: '/doc', epoch: 'e1', version: 0, value: { n: 0 } });
        proposals++;
        return Promise.reject(failure);
      },
    };
    const replica = await replicate(client, '/doc', { maxRetryDelay: 10 });
    await assert.rejects(replica.propose([{ op: 'replace', path: '/n', value: 1 }]), (error: unknown) => error instanceof ProposalError && error.cause === failure);
    assert.equal(proposals, 3);
    assert.deepEqual(replica.value, { n: 0 });
    assert.equal(replica.pendingCount, 0);
  });

  it('replicate() that fails (no such state channel) leaves nothing subscribed', async () => {
    let subscribed = 0;
    const refusal = Object.assign(new Error('405:/nostate:no state channel of that name on this server'), { code: 'bayeux', bayeuxCode: 405 });
    const client: ReplicaClient = {
      subscribe: () => {
        subscribed++;
        return Promise.resolve({ unsubscribe: () => Promise.resolve(void subscribed--) });
      },
      request: () => Promise.reject(refusal),
    };
    await assert.rejects(replicate(client, '/nostate'), (error: unknown) => error === refusal);
    assert.equal(subscribed, 0);
  });
});

/** A client driven by the test: snapshots come from `snapshot`, proposals wait for `answer`. */
function scriptedClient(snapshot: { epoch: string; version: number; value: unknown }) {
  const proposals: Array<{ data: unknown; answer: (version: number) => void }> = [];
  let recover: ((recovered: boolean) => void) | undefined;
  let deliver: ((data: unknown) => void) | undefined;
  const client: ReplicaClient = {
    subscribe: (_channel, handler, options) => {
      deliver = handler;
      recover = options?.onRecover;
      return Promise.resolve({ unsubscribe: () => Promise.resolve() });
    },
    request: (_channel, data) => {
      if ((data as { op: string }).op === 'snapshot') return Promise.resolve({ channel: '/doc', ...snapshot });
      return new Promise((resolve) => proposals.push({ data, answer: (version) => resolve({ version }) }));
    },
  };
  return { client, proposals, snapshot, recover: (ok: boolean) => recover!(ok), deliver: (data: unknown) => deliver!(data) };
}

const settled = () => new Promise((resolve) => setImmediate(resolve));

describe('Replica: a proposal whose answer comes after a snapshot that holds it', () => {
  it("shows the server's value once the answer comes, not the proposal applied over it again", async () => {
    const s = scriptedClient({ epoch: 'e1', version: 0, value: { done: false } });
    const replica = await replicate(s.client, '/doc');
    const accepted = replica.propose([{ op: 'replace', path: '/done', value: true }]);
    await settled();
    assert.equal(s.proposals.length, 1, 'the proposal was sent');
    assert.deepEqual(replica.value, { done: true }, 'optimistic');
    // The server applied it at version 1, another client unticked the box at version 2, and this
    // replica's line came back without the messages it missed: it takes a snapshot.
    s.snapshot.version = 2;
    s.snapshot.value = { done: false };
    s.recover(false);
    await settled();
    assert.equal(replica.version, 2);
    // The answer to the proposal, lost with the line, comes now: version 1, which the snapshot holds.
    s.proposals[0]!.answer(1);
    assert.equal(await accepted, 1);
    assert.equal(replica.pendingCount, 0);
    assert.deepEqual(replica.value, { done: false }, "the server's value: the proposal is in it once, and was undone since");
  });

  it('settles the proposal from a replayed patch the snapshot already holds, before the answer comes', async () => {
    const s = scriptedClient({ epoch: 'e1', version: 0, value: { done: false } });
    const replica = await replicate(s.client, '/doc');
    const accepted = replica.propose([{ op: 'replace', path: '/done', value: true }]);
    await settled();
    s.snapshot.version = 2;
    s.snapshot.value = { done: false };
    s.recover(false);
    await settled();
    // The recovery replays version 1, the server's patch for this proposal: older than the snapshot.
    const id = (s.proposals[0]!.data as { id: string }).id;
    s.deliver({ epoch: 'e1', version: 1, patch: [{ op: 'replace', path: '/done', value: true }], proposal: id });
    assert.deepEqual([replica.value, replica.version, replica.pendingCount], [{ done: false }, 2, 0]);
    assert.equal(await accepted, 1);
    // A patch already held that is nobody's proposal changes nothing.
    s.deliver({ epoch: 'e1', version: 2, patch: [{ op: 'replace', path: '/done', value: true }] });
    assert.deepEqual([replica.value, replica.version], [{ done: false }, 2]);
  });
});

describe('Replica: a snapshot that is not one', () => {
  it('refuses to start on an answer without an epoch, a whole version or a JSON value, saying why', async () => {
    const bad: Array<[string, { epoch: unknown; version: unknown; value: unknown }]> = [
      ['a Date in the value', { epoch: 'e1', version: 0, value: { when: new Date() } }],
      ['no epoch', { epoch: undefined, version: 0, value: {} }],
      ['a version that is not whole', { epoch: 'e1', version: 1.5, value: {} }],
      ['a negative version', { epoch: 'e1', version: -1, value: {} }],
    ];
    for (const [what, snapshot] of bad) {
      const s = scriptedClient(snapshot as { epoch: string; version: number; value: unknown });
      await assert.rejects(replicate(s.client, '/doc'), /is not \{epoch, version, value\} with a JSON value/, what);
    }
  });
});
