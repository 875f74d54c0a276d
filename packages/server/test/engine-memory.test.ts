import { MemoryEngine } from '../src/index.js';
import { engineConformance } from './engine-conformance.js';

engineConformance('memory', { create: () => new MemoryEngine(), reset: async () => {} });
