/** `GET <mount>/client.js`: the browser build of @perihelion/client, served with caching headers. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { request } from 'node:http';
import { runInNewContext } from 'node:vm';
import { startServer, type TestServer } from './helpers.js';

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    request(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    })
      .on('error', reject)
      .end();
  });
}

describe('client script route', () => {
  let test: TestServer;
  before(async () => {
    test = await startServer({ path: '/cometd' });
  });
  after(() => test.close());

  it('serves the state package at <mount>/state.js, defining PerihelionState.replicate when run as a script', async () => {
    const response = await get(`${test.url}/state.js`, { 'Accept-Encoding': 'gzip' });
    assert.equal(response.status, 200);
    assert.equal(response.headers['content-encoding'], 'gzip');
    const sandbox: Record<string, unknown> = {};
    sandbox.globalThis = sandbox;
    runInNewContext(gunzipSync(response.body).toString('utf8'), sandbox);
    const api = sandbox.PerihelionState as Record<string, unknown> | undefined;
    for (const name of ['replicate', 'diff', 'applyPatch', 'Replica']) assert.equal(typeof api?.[name], 'function', name);
    assert.notEqual((await get(`${test.url}/other.js`)).status, 200, 'only the known scripts');
  });

  it('serves the minified client at <mount>/client.js, gzipped when accepted, revalidated by ETag', async () => {
    const plain = await get(`${test.url}/client.js`);
    assert.equal(plain.status, 200);
    assert.match(String(plain.headers['content-type']), /^text\/javascript/);
    assert.match(String(plain.headers['cache-control']), /max-age=\d+/);
    assert.equal(plain.headers['set-cookie'], undefined, 'no session cookie on a cacheable file');
    const text = plain.body.toString('utf8');
    assert.match(text, /Perihelion/);
    assert.ok(text.length > 1000);

    const zipped = await get(`${test.url}/client.js`, { 'Accept-Encoding': 'gzip, br' });
    assert.equal(zipped.headers['content-encoding'], 'gzip');
    assert.equal(gunzipSync(zipped.body).toString('utf8'), text);
    assert.ok(zipped.body.length < plain.body.length);

    const etag = String(plain.headers.etag);
    assert.match(etag, /^".+"$/);
    const again = await get(`${test.url}/client.js`, { 'If-None-Match': etag });
    assert.equal(again.status, 304);
    assert.equal(again.body.length, 0);
  });

  it('leaves other paths under the mount to Bayeux', async () => {
    const other = await get(`${test.url}/client.jsx`);
    assert.equal(other.status, 405);
  });
});
