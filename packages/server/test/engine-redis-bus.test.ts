/** The Redis engine reading its bus: another node's bytes are input, and bad ones are reported, not fatal. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { RedisEngine } from '../src/index.js';
import { RecordingHost, publication } from './engine-conformance.js';
import { waitFor } from './helpers.js';
import { REDIS_URL, deleteKeys, requireRedis, uniquePrefix } from './redis-fixture.js';

before(requireRedis);

describe('redis engine bus', () => {
  const prefix = uniquePrefix('bus');
  let raw: Redis;
  before(() => {
    raw = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  });
  after(async () => {
    raw.disconnect();
    await deleteKeys(prefix);
  });

  it('reports a malformed message on the bus or its node channel, skips it and keeps delivering', async () => {
    const host = new RecordingHost();
    const engine = new RedisEngine({ url: REDIS_URL, prefix });
    await engine.start(host);
    try {
      await engine.addSession('s1');
      await engine.subscribe('s1', '/a');
      const garbage = ['no header line', '["b","node","1","/a",{"epoch":"e","offset":-3}]\n{"channel":"/a","data":1}', '["z"]\n', '["d","s1"]\nnot json'];
      for (const text of garbage) await raw.publish(`${prefix}bus`, text);
      await raw.publish(`${prefix}node:${engine.nodeId}`, '["f",1]\n');
      await engine.publish(publication('/a', 'after the garbage'));
      await waitFor(() => host.errors.length === garbage.length + 1, 2000, 'every bad message reported');
      assert.deepEqual(host.data('s1'), ['after the garbage']);
      for (const error of host.errors) {
        assert.equal((error as Error).name, 'BusFormatError');
        assert.match((error as Error).message, new RegExp(`^unreadable message on Redis channel ${prefix}(bus|node:${engine.nodeId}): `));
      }
      assert.match(String(host.errors[1]), /position is malformed/);
    } finally {
      await engine.close();
    }
  });

  it("delivers a well-formed broadcast of another node, position and all, without parsing its payload first", async () => {
    const host = new RecordingHost();
    const engine = new RedisEngine({ url: REDIS_URL, prefix });
    await engine.start(host);
    try {
      await engine.addSession('s1');
      await engine.subscribe('s1', '/b');
      const payload = '{"channel":"/b","data":"from afar","ext":{"position":{"epoch":"zz","offset":3}}}';
      await raw.publish(`${prefix}bus`, `["b","another-node","9","/b",{"epoch":"zz","offset":3}]\n${payload}`);
      await waitFor(() => host.publications.length === 1, 2000, 'the broadcast delivered');
      assert.deepEqual(host.received.get('s1'), [payload]);
      const [delivered] = host.publications;
      assert.deepEqual(delivered?.position, { epoch: 'zz', offset: 3 });
      assert.equal(delivered?.message.data, 'from afar');
      assert.deepEqual(host.errors, []);
    } finally {
      await engine.close();
    }
  });
});
