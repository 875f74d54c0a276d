// The report's ratio within each round (roundRatioSpread): the spread that says how far a ratio of
// medians holds on a host that drifts from round to round.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { roundRatioSpread } from '../report.mjs';

const row = (server, round, serverUsPerMsg, { scenario = 'fanout', rate = 20 } = {}) => ({ scenario, rate, server, round, serverUsPerMsg });
const spread = (results, other = 'floor') => roundRatioSpread(results, { scenario: 'fanout', rate: 20, server: 'perihelion', other, key: 'serverUsPerMsg' });

describe('bench report: CPU ratio within each round', () => {
  it('pairs the two servers of each round and gives the lowest and highest ratio', () => {
    const results = [row('perihelion', 1, 11), row('floor', 1, 10), row('perihelion', 2, 12), row('floor', 2, 8), row('perihelion', 3, 9), row('floor', 3, 10)];
    // 1.1, 1.5 and 0.9: not the ratio of the lowest to the highest value of each server.
    assert.equal(spread(results), '0.90×–1.50×');
  });

  it('leaves out rounds where one of the two is missing or unmeasured, and other scenarios and rates', () => {
    const results = [
      row('perihelion', 1, 11),
      row('floor', 1, 10),
      row('perihelion', 2, 20),
      row('floor', 2, 0),
      row('perihelion', 3, 30),
      row('perihelion', 4, 12),
      row('floor', 4, 10),
      row('floor', 4, 1, { rate: 50 }),
      row('floor', 4, 1, { scenario: 'channels' }),
    ];
    assert.equal(spread(results), '1.10×–1.20×');
  });

  it('says nothing with fewer than two rounds to pair', () => {
    assert.equal(spread([row('perihelion', 1, 11), row('floor', 1, 10)]), '–');
    assert.equal(spread([row('perihelion', 1, 11), row('floor', 1, 10), row('perihelion', 2, 11)]), '–');
    assert.equal(spread([row('perihelion', 1, 11), row('floor', 1, 10), row('perihelion', 2, 11), row('floor', 2, 9)], 'nchan'), '–');
  });
});
