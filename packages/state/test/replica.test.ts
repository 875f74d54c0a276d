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
