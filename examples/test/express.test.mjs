import { start } from '../express/app.mjs';
import { testExample } from '../shared/suite.mjs';

testExample('Express', start);
