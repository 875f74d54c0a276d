/**
 * The relay of state-channel requests between the nodes of a cluster (state/state-relay.ts), on
 * its own: what a node answers when the holder cannot be reached, and what it does with messages
 * from another node that are not what they claim. (Two real nodes on Redis: the client package's
 * state-replica tests.)
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ServiceRefusal } from '../src/core/publish.js';
import type { Session } from '../src/core/session.js';
import { StateRelay, type StateRelayHost } from '../src/state/state-relay.js';

/** A host that records what the relay sends and serves, answering `tell` with `heard` ('unknown': undefined, Redis away). */
function host(heard: boolean | 'unknown' = true): StateRelayHost & { told: Array<[string, Record<string, unknown>]>; served: Session[]; delivered: unknown[][]; errors: unknown[] } {
  const told: Array<[string, Record<string, unknown>]> = [];
  const served: Session[] = [];
  const delivered: unknown[][] = [];
  const errors: unknown[] = [];
  return {
    told,
    served,
    delivered,
    errors,
    tell: async (node, message) => (told.push([node, message]), heard === 'unknown' ? undefined : heard),
    serve: async (request, session) => (served.push(session), request.op === 'snapshot' ? { channel: request.channel, epoch: 'e', version: 3, value: 1 } : new ServiceRefusal('409:/s:State conflict')),
    deliver: async (...args) => void delivered.push(args),
    disconnect: async () => undefined,
    reportError: (error) => void errors.push(error),
  };
}

const session: Session = {
  id: 'client-1',
  identity: { id: 'ann', roles: ['editor'], claims: { sub: 'ann' } },
  connectionType: 'websocket',
  subscriptions: new Set(['/s']),
  data: new Map([['kept', 'here']]),
  remoteAddress: '10.0.0.7',
  deliver: () => {},
  disconnect: () => {},
};

describe('state relay', () => {
  it('passes a request with what the holder needs of the session, and resolves to the answer the holder sends back', async () => {
    const asking = host();
    const relay = new StateRelay(asking);
    const answer = relay.ask('holder', '/s', { channel: '/s', op: 'snapshot' }, session);
    const [[node, message]] = asking.told as [[string, Record<string, unknown>]];
    assert.equal(node, 'holder');
    assert.deepEqual(message.session, { id: 'client-1', identity: session.identity, connectionType: 'websocket', subscriptions: ['/s'], remoteAddress: '10.0.0.7' }, 'not its data, which stays with its node');
    // The holder's side: serves it for a session made from those facts, and answers.
    const holding = host();
    new StateRelay(holding).onNodeMessage('asker', JSON.parse(JSON.stringify(message)) as Record<string, unknown>);
    await new Promise((resolve) => setImmediate(resolve));
    const remote = holding.served[0]!;
    assert.deepEqual([remote.id, remote.identity, remote.connectionType, [...remote.subscriptions], remote.data.size, remote.remoteAddress], ['client-1', session.identity, 'websocket', ['/s'], 0, '10.0.0.7']);
    remote.deliver('/service/note', { hi: 1 });
    assert.deepEqual(holding.delivered, [['client-1', '/service/note', { hi: 1 }]], "the session's deliver reaches it on its node");
    const [[back, reply]] = holding.told as [[string, Record<string, unknown>]];
    assert.equal(back, 'asker');
    relay.onNodeMessage('holder', reply);
    assert.deepEqual(await answer, { channel: '/s', epoch: 'e', version: 3, value: 1 });
  });

  it('sends the snapshot requests of one channel made while one is on its way once, and gives each the one answer; proposals each their own', async () => {
    const asking = host();
    const relay = new StateRelay(asking);
    const answers = [1, 2, 3].map(() => relay.ask('holder', '/s', { channel: '/s', op: 'snapshot' }, session));
    const other = relay.ask('holder', '/t', { channel: '/t', op: 'snapshot' }, session);
    relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session).catch(() => {});
    relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session).catch(() => {});
    await new Promise((resolve) => setImmediate(resolve));
    const sent = asking.told.map(([, message]) => message.request as { channel: string; op: string });
    assert.deepEqual(sent, [{ channel: '/s', op: 'snapshot' }, { channel: '/t', op: 'snapshot' }, { channel: '/s', op: 'propose' }, { channel: '/s', op: 'propose' }]);
    const reply = (index: number, data: unknown): void => void relay.onNodeMessage('holder', { t: 'state-rep', id: asking.told[index]![1].id, data });
    reply(0, { channel: '/s', epoch: 'e', version: 1, value: 's' });
    reply(1, { channel: '/t', epoch: 'e', version: 1, value: 't' });
    const [first, ...rest] = await Promise.all(answers);
    for (const answer of rest) assert.equal(answer, first, 'the same answer object (serialised once for every reply)');
    assert.deepEqual(first, { channel: '/s', epoch: 'e', version: 1, value: 's' });
    assert.deepEqual(await other, { channel: '/t', epoch: 'e', version: 1, value: 't' });
    // Once answered, the next request goes again.
    void relay.ask('holder', '/s', { channel: '/s', op: 'snapshot' }, session);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(asking.told.length, 5);
    relay.close();
  });

  it("carries the holder's refusal back as a refusal", async () => {
    const asking = host();
    const relay = new StateRelay(asking);
    const answer = relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session);
    const holding = host();
    new StateRelay(holding).onNodeMessage('asker', asking.told[0]![1]);
    await new Promise((resolve) => setImmediate(resolve));
    relay.onNodeMessage('holder', holding.told[0]![1]);
    const refusal = await answer;
    assert.ok(refusal instanceof ServiceRefusal);
    assert.equal(refusal.error, '409:/s:State conflict');
  });

  it('answers 503 at once when the holder is not listening or the cluster cannot be reached, and after its timeout when the holder is silent', async () => {
    for (const [heard, why] of [
      [false, /^503:\/s:Temporarily unavailable: the state channel cannot be reached: node gone-node, which holds it, is gone$/],
      ['unknown', /^503:\/s:.*the cluster cannot be reached$/],
      [true, /^503:\/s:.*node gone-node, which holds it, did not answer within 50 ms$/],
    ] as const) {
      // The relay's timer does not keep a process alive (a server does): this test does.
      const alive = setTimeout(() => {}, 1000);
      const answer = await new StateRelay(host(heard), 50).ask('gone-node', '/s', { channel: '/s', op: 'snapshot' }, session);
      clearTimeout(alive);
      assert.ok(answer instanceof ServiceRefusal, String(heard));
      assert.match(answer.error, why);
    }
  });

  it('refuses a request from another node that is not one, and ignores answers nobody waits for', async () => {
    const holding = host();
    const relay = new StateRelay(holding);
    const facts = { id: 'c', identity: null, connectionType: null, subscriptions: [], remoteAddress: undefined };
    const bad: Array<Record<string, unknown>> = [
      { t: 'state', id: '1', request: 'snapshot', session: facts },
      { t: 'state', id: '2', request: { channel: '/s', op: 'snapshot' }, session: { ...facts, id: 5 } },
      { t: 'state', id: '3', request: { channel: '/s', op: 'snapshot' }, session: { ...facts, subscriptions: [1] } },
      { t: 'state', id: '4', request: { channel: '/s', op: 'snapshot' }, session: { ...facts, identity: { id: 'x' } } },
    ];
    for (const message of bad) assert.equal(relay.onNodeMessage('n', message), true);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(holding.served.length, 0, 'nothing was served');
    assert.deepEqual(holding.told.map(([, reply]) => [reply.id, /^400::Bad request: node n sent a state request that is not one$/.test(String(reply.error))]), ['1', '2', '3', '4'].map((id) => [id, true]));
    assert.equal(relay.onNodeMessage('n', { t: 'state-rep', id: '99', data: 1 }), true);
    assert.equal(relay.onNodeMessage('n', { t: 'other' }), false, 'not a message of the relay');
  });

  it('takes an answer from the node asked only, and keeps at most maxWaiting requests waiting (503 past it)', async () => {
    const asking = host();
    const relay = new StateRelay(asking, 10_000, 2);
    const first = relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session);
    void relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session);
    const third = await relay.ask('holder', '/s', { channel: '/s', op: 'propose' }, session);
    assert.ok(third instanceof ServiceRefusal);
    assert.match(third.error, /^503:\/s:.*2 requests wait for the nodes holding state channels already$/);
    await new Promise((resolve) => setImmediate(resolve));
    const id = asking.told[0]![1].id;
    relay.onNodeMessage('another-node', { t: 'state-rep', id, data: { forged: true } });
    relay.onNodeMessage('holder', { t: 'state-rep', id, data: { channel: '/s', version: 4 } });
    assert.deepEqual(await first, { channel: '/s', version: 4 });
    relay.close();
  });

  it('answers what waits when the server closes', async () => {
    const relay = new StateRelay(host());
    const answer = relay.ask('holder', '/s', { channel: '/s', op: 'snapshot' }, session);
    await new Promise((resolve) => setImmediate(resolve));
    relay.close();
    const refusal = await answer;
    assert.ok(refusal instanceof ServiceRefusal);
    assert.match(refusal.error, /^503::Temporarily unavailable: the server is shutting down$/);
  });
});
