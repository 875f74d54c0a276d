import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { StateError, assertJson, clone, deepEqual, isJsonValue } from '../src/index.js';
import type { JsonValue } from '../src/index.js';

describe('JSON values', () => {
  it('accepts what JSON can hold', () => {
    const good: unknown[] = [null, true, 0, -0, 1.5e300, '', 'é😀', [], {}, [[], {}], { a: [1, { b: null }] }, Object.create(null), { '': 1, '/~': 2 }];
    for (const v of good) {
      assert.ok(isJsonValue(v), JSON.stringify(v));
      assertJson(v);
    }
  });

  it('refuses the rest, naming where and what', () => {
    const bad: [unknown, string, RegExp][] = [
      [undefined, '', /value \(the root\) is undefined/],
      [{ a: [0, { b: () => 0 }] }, '/a/1/b', /value at \/a\/1\/b is a function/],
      [[NaN], '/0', /NaN/],
      [{ big: 1n }, '/big', /bigint/],
      [{ d: new Date(0) }, '/d', /a Date/],
      [{ r: /x/ }, '/r', /a RegExp/],
      [{ b: new Uint8Array(1) }, '/b', /a Uint8Array/],
      [{ p: Promise.resolve() }, '/p', /a Promise/],
      [{ e: new Error('x') }, '/e', /an? Error/],
    ];
    for (const [v, path, pattern] of bad) {
      assert.equal(isJsonValue(v), false);
      assert.throws(
        () => assertJson(v),
        (err: unknown) => err instanceof StateError && err.code === 'ERR_NOT_JSON' && err.path === path && pattern.test(err.message),
        path,
      );
    }
    assert.throws(() => assertJson({ x: undefined }, { name: 'state' }), /state at \/x is undefined/);
  });

  it('clone copies deeply, keeps shared subtrees apart, and refuses what assertJson refuses', () => {
    const shared = { s: [1] };
    const v = { a: shared, b: shared, c: [1, 'x', null, { d: true }] };
    const c = clone(v);
    assert.deepEqual(c, v);
    assert.notEqual(c.a, v.a);
    assert.notEqual(c.a, c.b);
    assert.notEqual(c.c[3], v.c[3]);
    assert.throws(() => clone({ x: [undefined] } as unknown as JsonValue), { code: 'ERR_NOT_JSON', path: '/x/0' });
    const cyclic: Record<string, unknown> = {};
    cyclic['self'] = cyclic;
    assert.throws(() => clone(cyclic as JsonValue), { code: 'ERR_NOT_JSON', path: '/self' });
  });

  it('deepEqual is JSON equality', () => {
    assert.ok(deepEqual({ a: [1, { b: 2 }], c: null }, { c: null, a: [1, { b: 2 }] }));
    assert.ok(deepEqual(0, -0));
    assert.ok(deepEqual(Object.create(null), {}));
    assert.ok(!deepEqual([1, 2], [2, 1]));
    assert.ok(!deepEqual({ a: 1 }, { a: 1, b: 2 }));
    assert.ok(!deepEqual({ a: 1, b: 2 }, { a: 1 }));
    assert.ok(!deepEqual({ a: undefined }, { b: undefined }));
    assert.ok(!deepEqual([], {}));
    assert.ok(!deepEqual({ 0: 'x' }, ['x']));
    assert.ok(!deepEqual(1, '1'));
    assert.ok(!deepEqual(null, {}));
    assert.ok(!deepEqual({ toString: 1 }, {}));
    assert.ok(!deepEqual({}, { toString: 1 }));
  });

  it('the package source imports nothing, so it runs in browsers', () => {
    const dir = new URL('../../src/', import.meta.url);
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
      const text = readFileSync(new URL(file, dir), 'utf8');
      for (const m of text.matchAll(/\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'/g)) {
        const spec = m[1] ?? m[2]!;
        assert.match(spec, /^\.\/[a-z-]+\.js$/, `${file} imports ${spec}`);
      }
      assert.doesNotMatch(text, /\b(process|Buffer|require|globalThis)\b/, file);
    }
  });
});
