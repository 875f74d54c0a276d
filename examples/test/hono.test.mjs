import { start } from '../hono/app.mjs';
import { testExample } from '../shared/suite.mjs';

testExample('Hono', start);
