import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PerihelionError, WorkerBroker, WorkersEngine, linkPair } from '../src/index.js';
import type { LinkEnd, ToBroker, ToWorker } from '../src/engine/worker-link.js';
import { distributedEngineConformance, engineConformance, publication, RecordingHost, type EngineFixture } from './engine-conformance.js';
import { waitFor } from './helpers.js';

/** Workers on one broker, over in-process lines (each message cloned, as IPC does); a new broker per test. */
function fixture(): EngineFixture {
  let broker = new WorkerBroker();
  return {
    create: () => {
      const { worker, broker: end } = linkPair();
      const node = randomBytes(4).toString('hex');
      broker.attach(node, end);
      return new WorkersEngine(worker, node);
    },
    reset: async () => {
      await broker.close();
      broker = new WorkerBroker();
    },
  };
}

engineConformance('workers', fixture());
distributedEngineConformance('workers', fixture());

describe('workers engine: bounded lines and calls', () => {
  it('refuses publishes while a worker cannot read its line fast enough, and takes them again once it has caught up', async () => {
    const broker = new WorkerBroker({ maxBacklog: 5 });
    // A worker whose line is stuck: what the broker sends it stays on the line.
    const stuck: ToWorker[] = [];
    let callBroker: (message: ToBroker) => void = () => {};
    broker.attach('stuck', { send: (message) => void stuck.push(message), onMessage: (handler) => void (callBroker = handler), backlog: () => stuck.length });
    callBroker({ k: 'call', id: 1, method: 'subscribe', args: ['slow-session', '/busy', [], 0], retention: [] });
    const { worker, broker: end } = linkPair();
    broker.attach('publisher', end);
    const publisher = new WorkersEngine(worker, 'publisher');
    const host = new RecordingHost();
    await publisher.start(host);
    try {
      await waitFor(() => stuck.some((message) => message.k === 'ret' && message.id === 1), 2000, 'the stuck worker to be subscribed');
      stuck.splice(0);
      for (let i = 0; i < 6; i++) await publisher.publish(publication('/busy', i));
      await assert.rejects(publisher.publish(publication('/busy', 'one too many')), (error: PerihelionError) => {
        assert.equal(error.code, 'ERR_ENGINE_UNAVAILABLE');
        assert.match(error.message, /worker stuck has 6 messages waiting on its line \(more than 5\)/);
        return true;
      });
      assert.equal(stuck.length, 6, 'the refused publish went nowhere');
      stuck.splice(0); // the worker has read its line
      await publisher.publish(publication('/busy', 'after'));
      assert.equal(stuck.length, 1);
    } finally {
      await publisher.close();
      await broker.close();
    }
  });

  it('refuses a call the broker does not answer within callTimeout, and calls past maxPending at once', async () => {
    const silent: LinkEnd<ToBroker, ToWorker> = { send: () => {}, onMessage: () => {} };
    const engine = new WorkersEngine(silent, 'alone', { callTimeout: 100, maxPending: 2 });
    await engine.start(new RecordingHost());
    try {
      const first = engine.subscriberCount('/a');
      const second = engine.subscriberCount('/b');
      await assert.rejects(engine.subscriberCount('/c'), /2 calls to the workers' broker are waiting for an answer \(at most 2\): subscriberCount refused/);
      const started = Date.now();
      await assert.rejects(first, (error: PerihelionError) => error.code === 'ERR_ENGINE_UNAVAILABLE' && /did not answer subscriberCount within 100 ms/.test(error.message));
      await assert.rejects(second, /within 100 ms/);
      assert.ok(Date.now() - started < 1000, 'refused near the deadline');
    } finally {
      await engine.close();
    }
  });

  it('answers the calls already sent before it closes (a shutdown ends every session), waiting at most callTimeout', async () => {
    const broker = new WorkerBroker();
    const { worker, broker: end } = linkPair();
    broker.attach('closing', end);
    const engine = new WorkersEngine(worker, 'closing');
    await engine.start(new RecordingHost());
    try {
      await engine.addSession('ending-session');
      const removed = engine.removeSession('ending-session');
      const counted = engine.subscriberCount('/anything');
      await engine.close();
      await removed;
      assert.equal(await counted, 0);
    } finally {
      await broker.close();
    }
    // A broker that never answers: close still ends, once the calls are refused.
    const silent = new WorkersEngine({ send: () => {}, onMessage: () => {} }, 'deaf', { callTimeout: 100 });
    await silent.start(new RecordingHost());
    const unanswered = silent.removeSession('nobody');
    const started = Date.now();
    await silent.close();
    assert.ok(Date.now() - started < 1000, 'close waited about callTimeout');
    await assert.rejects(unanswered, /did not answer removeSession within 100 ms/);
  });

  it("hands the sessions of a worker that exited to a live one (their presence leaves are its to publish)", async () => {
    const broker = new WorkerBroker();
    const engines: WorkersEngine[] = [];
    const start = async (node: string): Promise<{ engine: WorkersEngine; host: RecordingHost }> => {
      const { worker, broker: end } = linkPair();
      broker.attach(node, end);
      const engine = new WorkersEngine(worker, node);
      const host = new RecordingHost();
      await engine.start(host);
      engines.push(engine);
      return { engine, host };
    };
    try {
      const doomed = await start('doomed');
      const survivor = await start('survivor');
      await doomed.engine.addSession('gone-1', 'user-1');
      await doomed.engine.subscribe('gone-1', '/room');
      await doomed.engine.subscribe('gone-1', '/other');
      await survivor.engine.addSession('stays');
      await broker.detach('doomed');
      await waitFor(() => survivor.host.lost.length === 1, 2000, 'the lost session to reach the live worker');
      assert.deepEqual(survivor.host.lost, [{ clientId: 'gone-1', user: 'user-1', subscriptions: ['/room', '/other'] }]);
      assert.equal(await survivor.engine.subscriberCount('/room'), 0, 'and it is gone from the store');
    } finally {
      await Promise.all(engines.map((engine) => engine.close()));
      await broker.close();
    }
  });

  it('frees the state channels of a worker that exited for the others to claim', async () => {
    const broker = new WorkerBroker();
    const engines: WorkersEngine[] = [];
    const start = async (node: string): Promise<WorkersEngine> => {
      const { worker, broker: end } = linkPair();
      broker.attach(node, end);
      const engine = new WorkersEngine(worker, node);
      await engine.start(new RecordingHost());
      engines.push(engine);
      return engine;
    };
    try {
      const doomed = await start('doomed');
      const survivor = await start('survivor');
      assert.equal(await doomed.claimState('/board'), null);
      assert.equal(await survivor.claimState('/board'), 'doomed');
      assert.equal(await survivor.stateHolder('/board'), 'doomed');
      await broker.detach('doomed');
      assert.equal(await survivor.stateHolder('/board'), null, 'held by a worker that is gone');
      assert.equal(await survivor.claimState('/board'), null, 'and the survivor holds it now');
    } finally {
      await Promise.all(engines.map((engine) => engine.close()));
      await broker.close();
    }
  });

  it('refuses bad bounds', () => {
    assert.throws(() => new WorkerBroker({ maxBacklog: 0 }), /maxBacklog must be a whole number/);
    assert.throws(() => new WorkersEngine({ send: () => {}, onMessage: () => {} }, 'n', { callTimeout: -1 }), /callTimeout must be a whole number/);
  });
});
