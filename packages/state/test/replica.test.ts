/**
 * Replica unit tests with a client that answers in memory: what `propose` does with a change
 * that cannot be made here (a patch that does not apply, a draft that is not JSON).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ProposalError, StateError, replicate, type ReplicaClient } from '../src/index.js';

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
