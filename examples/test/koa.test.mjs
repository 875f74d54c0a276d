import { start } from '../koa/app.mjs';
import { testExample } from '../shared/suite.mjs';

testExample('Koa', start);
