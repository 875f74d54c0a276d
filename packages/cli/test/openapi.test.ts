/** docs/openapi.yaml describes the HTTP API the server really has: the same endpoints and methods. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { createServer } from '@perihelion/server';

const SPEC = fileURLToPath(new URL('../../../../docs/openapi.yaml', import.meta.url));
const KEY = 'openapi-test-key-0123456';

describe('docs/openapi.yaml', () => {
  it('lists exactly the endpoints and methods the server answers', async () => {
    const spec = parse(readFileSync(SPEC, 'utf8')) as { openapi: string; paths: Record<string, Record<string, unknown>> };
    assert.match(spec.openapi, /^3\./);
    const server = createServer({ apiKey: KEY, pingInterval: 0, drainTimeout: 0 });
    const { port } = (await server.listen({ port: 0, host: '127.0.0.1' })) as AddressInfo;
    const call = (method: string, path: string): Promise<Response> =>
      fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, ...(method === 'POST' ? { body: '{}' } : {}) });
    try {
      // The server names its endpoints when asked for one it does not have.
      const unknown = (await (await call('GET', '/api/no-such-endpoint')).json()) as { error: { message: string } };
      const served = [...unknown.error.message.split('; the endpoints are ')[1]!.matchAll(/\/api\/[a-z]+/g)].map((m) => m[0]).sort();
      assert.deepEqual(Object.keys(spec.paths).sort(), served, 'documented paths = served paths');
      for (const [path, operations] of Object.entries(spec.paths)) {
        const methods = Object.keys(operations).map((m) => m.toUpperCase());
        assert.equal(methods.length, 1, `${path} has one method`);
        const response = await call(methods[0]!, path);
        assert.notEqual(response.status, 405, `${methods[0]} ${path} is the method the server takes`);
        const body = (await response.json()) as { error?: { code: string } };
        assert.notEqual(body.error?.code, 'not_found', `${path} exists`);
      }
    } finally {
      await server.close();
    }
  });
});
