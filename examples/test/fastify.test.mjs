import { start } from '../fastify/app.mjs';
import { testExample } from '../shared/suite.mjs';

testExample('Fastify', start);
