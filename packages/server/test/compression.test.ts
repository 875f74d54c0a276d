/** Large long-polling answers (a state snapshot, a recovery replay) go gzip-compressed to clients that accept it. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { postForBytes, startServer, type TestServer } from './helpers.js';

describe('long-polling compression', () => {
  let t: TestServer;
  let clientId: string;
  const big = { rows: Array.from({ length: 2000 }, (_, i) => ({ id: i, name: `row ${i}` })) };
  before(async () => {
    t = await startServer({ compressAbove: 4096 });
    t.server.subscribe('/service/big', () => big);
    t.server.subscribe('/service/small', () => ({ ok: true }));
    const { bytes } = await postForBytes(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], {});
    clientId = (JSON.parse(String(bytes)) as Array<{ clientId: string }>)[0]!.clientId;
  });
  after(() => t.close());

  it('gzips an answer past compressAbove for a client that accepts gzip, and says so', async () => {
    const { headers, bytes } = await postForBytes(t.url, [{ channel: '/service/big', clientId, data: {}, id: '1' }], { 'Accept-Encoding': 'gzip, deflate' });
    assert.equal(headers['content-encoding'], 'gzip');
    assert.equal(headers.vary, 'Accept-Encoding');
    const answer = (JSON.parse(String(gunzipSync(bytes))) as Array<{ data?: unknown }>).find((m) => m.data !== undefined);
    assert.deepEqual(answer?.data, big);
    assert.ok(bytes.length < JSON.stringify(big).length / 3, `compressed to ${bytes.length} bytes`);
  });

  it('sends it as it is to a client that does not accept gzip, and small answers always', async () => {
    const plain = await postForBytes(t.url, [{ channel: '/service/big', clientId, data: {}, id: '2' }], {});
    assert.equal(plain.headers['content-encoding'], undefined);
    assert.equal(JSON.parse(String(plain.bytes)).length, 2);
    const small = await postForBytes(t.url, [{ channel: '/service/small', clientId, data: {}, id: '3' }], { 'Accept-Encoding': 'gzip' });
    assert.equal(small.headers['content-encoding'], undefined);
  });
});
