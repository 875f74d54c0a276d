import { randomBytes } from 'node:crypto';
import { WorkerBroker, WorkersEngine, linkPair } from '../src/index.js';
import { distributedEngineConformance, engineConformance, type EngineFixture } from './engine-conformance.js';

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
