import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StateError, applyPatch, clone } from '../src/index.js';
import type { JsonObject, JsonValue, Operation } from '../src/index.js';

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/** Expect a StateError with this code, op index and path. */
function refused(code: string, index: number | undefined, path: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof StateError, String(err));
    assert.equal(err.code, code, err.message);
    assert.equal(err.index, index, err.message);
    assert.equal(err.path, path, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const ops = (list: unknown[]) => list as Operation[];

describe('applyPatch', () => {
  describe('RFC 6902 appendix A examples', () => {
    const examples: [string, JsonValue, unknown[], JsonValue][] = [
      ['A.1 add an object member', { foo: 'bar' }, [{ op: 'add', path: '/baz', value: 'qux' }], { baz: 'qux', foo: 'bar' }],
      ['A.2 add an array element', { foo: ['bar', 'baz'] }, [{ op: 'add', path: '/foo/1', value: 'qux' }], { foo: ['bar', 'qux', 'baz'] }],
      ['A.3 remove an object member', { baz: 'qux', foo: 'bar' }, [{ op: 'remove', path: '/baz' }], { foo: 'bar' }],
      ['A.4 remove an array element', { foo: ['bar', 'qux', 'baz'] }, [{ op: 'remove', path: '/foo/1' }], { foo: ['bar', 'baz'] }],
      ['A.5 replace a value', { baz: 'qux', foo: 'bar' }, [{ op: 'replace', path: '/baz', value: 'boo' }], { baz: 'boo', foo: 'bar' }],
      [
        'A.6 move a value',
        { foo: { bar: 'baz', waldo: 'fred' }, qux: { corge: 'grault' } },
        [{ op: 'move', from: '/foo/waldo', path: '/qux/thud' }],
        { foo: { bar: 'baz' }, qux: { corge: 'grault', thud: 'fred' } },
      ],
      ['A.7 move an array element', { foo: ['all', 'grass', 'cows', 'eat'] }, [{ op: 'move', from: '/foo/1', path: '/foo/3' }], { foo: ['all', 'cows', 'eat', 'grass'] }],
      [
        'A.8 test a value: success',
        { baz: 'qux', foo: ['a', 2, 'c'] },
        [
          { op: 'test', path: '/baz', value: 'qux' },
          { op: 'test', path: '/foo/1', value: 2 },
        ],
        { baz: 'qux', foo: ['a', 2, 'c'] },
      ],
      ['A.10 add a nested member object', { foo: 'bar' }, [{ op: 'add', path: '/child', value: { grandchild: {} } }], { foo: 'bar', child: { grandchild: {} } }],
      ['A.11 ignore unrecognized elements', { foo: 'bar' }, [{ op: 'add', path: '/baz', value: 'qux', xyz: 123 }], { foo: 'bar', baz: 'qux' }],
      ['A.14 ~ escape ordering', { '/': 9, '~1': 10 }, [{ op: 'test', path: '/~01', value: 10 }], { '/': 9, '~1': 10 }],
      ['A.16 add an array value', { foo: ['bar'] }, [{ op: 'add', path: '/foo/-', value: ['abc', 'def'] }], { foo: ['bar', ['abc', 'def']] }],
      ['copy', { a: { b: [1] } }, [{ op: 'copy', from: '/a', path: '/c' }], { a: { b: [1] }, c: { b: [1] } }],
      ['replace the root', { a: 1 }, [{ op: 'replace', path: '', value: [1] }], [1]],
      ['add at the root', { a: 1 }, [{ op: 'add', path: '', value: 'x' }], 'x'],
      ['move to itself', { a: { b: 1 } }, [{ op: 'move', from: '/a', path: '/a' }], { a: { b: 1 } }],
      ['an empty patch', { a: 1 }, [], { a: 1 }],
      ['test whole document', { a: [1, { b: 2 }] }, [{ op: 'test', path: '', value: { a: [1, { b: 2 }] } }], { a: [1, { b: 2 }] }],
      ['test compares objects whatever the key order', { a: { x: 1, y: 2 } }, [{ op: 'test', path: '/a', value: { y: 2, x: 1 } }], { a: { x: 1, y: 2 } }],
      ['the empty key', { '': 1 }, [{ op: 'replace', path: '/', value: 2 }], { '': 2 }],
    ];
    for (const [name, doc, patch, expected] of examples) {
      it(name, () => {
        const input = deepFreeze(clone(doc));
        assert.deepEqual(applyPatch(input, ops(patch)), expected);
        assert.deepEqual(input, doc);
      });
    }

    it('A.9 test a value: error', () => {
      assert.throws(() => applyPatch({ baz: 'qux' }, [{ op: 'test', path: '/baz', value: 'bar' }]), refused('ERR_PATCH_FAILED', 0, '/baz', /test failed/));
    });
    it('A.12 add to a nonexistent target', () => {
      assert.throws(() => applyPatch({ foo: 'bar' }, [{ op: 'add', path: '/baz/bat', value: 'qux' }]), refused('ERR_PATCH_FAILED', 0, '/baz/bat', /\/baz does not exist/));
    });
    it('A.15 comparing strings and numbers', () => {
      assert.throws(() => applyPatch({ '/': 9, '~1': 10 }, [{ op: 'test', path: '/~01', value: '10' }]), refused('ERR_PATCH_FAILED', 0, '/~01'));
    });
  });

  describe('refuses malformed patches (ERR_INVALID_PATCH) before applying any op', () => {
    const bad: [string, unknown, number | undefined, string, RegExp][] = [
      ['not an array', { op: 'add' }, undefined, '', /must be an array/],
      ['an op that is not an object', [{ op: 'test', path: '', value: 1 }, 'add'], 1, '', /must be an object/],
      ['an op that is an array', [['add']], 0, '', /not an array|an array/],
      ['an unknown op', [{ op: 'merge', path: '/a' }], 0, '', /"op" must be one of/],
      ['a missing op', [{ path: '/a' }], 0, '', /"op" must be one of .* missing/],
      ['a missing path', [{ op: 'remove' }], 0, '', /needs a "path"/],
      ['a path that is not a string', [{ op: 'remove', path: 1 }], 0, '', /needs a "path"/],
      ['a path without a leading /', [{ op: 'remove', path: 'a/b' }], 0, 'a/b', /start with "\/"/],
      ['a bad ~ escape', [{ op: 'remove', path: '/a~2' }], 0, '/a~2', /"~" not followed/],
      ['a missing from', [{ op: 'move', path: '/a' }], 0, '/a', /needs a "from"/],
      ['a bad from', [{ op: 'copy', from: 'x', path: '/a' }], 0, '/a', /"from"/],
      ['a missing value', [{ op: 'add', path: '/a' }], 0, '/a', /needs a "value"/],
      ['an undefined value', [{ op: 'replace', path: '/a', value: undefined }], 0, '/a', /undefined/],
      ['a value JSON cannot hold', [{ op: 'test', path: '/a', value: { when: new Date() } }], 0, '/a', /value at \/when is a Date/],
    ];
    for (const [name, patch, index, path, pattern] of bad) {
      it(name, () => {
        assert.throws(() => applyPatch({ a: 1 }, patch as Operation[]), refused('ERR_INVALID_PATCH', index, path, pattern));
      });
    }
  });

  describe('refuses ops that cannot apply (ERR_PATCH_FAILED), naming the op', () => {
    const doc: JsonValue = { a: { b: [10, 20, 30] }, s: 'str', n: null };
    const bad: [string, unknown[], number, string, RegExp][] = [
      ['remove a missing member', [{ op: 'remove', path: '/zz' }], 0, '/zz', /path \/zz does not exist/],
      ['replace a missing member', [{ op: 'test', path: '/s', value: 'str' }, { op: 'replace', path: '/a/zz', value: 1 }], 1, '/a/zz', /op 1 .*does not exist/],
      ['test a missing member', [{ op: 'test', path: '/a/b/3', value: 1 }], 0, '/a/b/3', /3 elements/],
      ['a member of a string', [{ op: 'add', path: '/s/x', value: 1 }], 0, '/s/x', /\/s is a string/],
      ['a member of null', [{ op: 'replace', path: '/n/x', value: 1 }], 0, '/n/x', /\/n is null/],
      ['an index past the end', [{ op: 'add', path: '/a/b/4', value: 1 }], 0, '/a/b/4', /out of range/],
      ['a replace at -', [{ op: 'replace', path: '/a/b/-', value: 1 }], 0, '/a/b/-', /not an array index/],
      ['a remove at -', [{ op: 'remove', path: '/a/b/-' }], 0, '/a/b/-', /not an array index/],
      ['an index with a leading zero', [{ op: 'remove', path: '/a/b/01' }], 0, '/a/b/01', /"01" is not an array index/],
      ['a negative index', [{ op: 'add', path: '/a/b/-1', value: 1 }], 0, '/a/b/-1', /not an array index/],
      ['a member name on an array', [{ op: 'add', path: '/a/b/x', value: 1 }], 0, '/a/b/x', /not an array index/],
      ['a failed test', [{ op: 'test', path: '/a/b', value: [10, 20] }], 0, '/a/b', /test failed/],
      ['a test of a number against a string', [{ op: 'test', path: '/a/b/0', value: '10' }], 0, '/a/b/0', /test failed/],
      ['a move into its own child', [{ op: 'move', from: '/a', path: '/a/b/0' }], 0, '/a/b/0', /own child/],
      ['a move of the root into a child', [{ op: 'move', from: '', path: '/x' }], 0, '/x', /own child/],
      ['a move from a missing path', [{ op: 'move', from: '/nope', path: '/x' }], 0, '/x', /from \/nope does not exist/],
      ['a copy from a missing path', [{ op: 'copy', from: '/a/b/9', path: '/x' }], 0, '/x', /from \/a\/b\/9 does not exist/],
      ['removing the root', [{ op: 'remove', path: '' }], 0, '', /cannot remove the root/],
      ['a path through the prototype', [{ op: 'remove', path: '/toString' }], 0, '/toString', /does not exist/],
      ['a path through __proto__', [{ op: 'add', path: '/__proto__/polluted', value: 1 }], 0, '/__proto__/polluted', /does not exist/],
    ];
    for (const [name, patch, index, path, pattern] of bad) {
      it(name, () => {
        const input = deepFreeze(clone(doc));
        assert.throws(() => applyPatch(input, ops(patch)), refused('ERR_PATCH_FAILED', index, path, pattern));
        assert.deepEqual(input, doc);
      });
    }
    it('into a scalar root', () => {
      assert.throws(() => applyPatch(5, [{ op: 'add', path: '/a', value: 1 }]), refused('ERR_PATCH_FAILED', 0, '/a', /the root is a number/));
    });
    it('beyond the depth limit', () => {
      let deep: JsonValue = 1;
      for (let i = 0; i < 999; i++) deep = [deep];
      assert.deepEqual(applyPatch({}, [{ op: 'add', path: '/x', value: deep }]), { x: deep });
      assert.throws(() => applyPatch({ x: {} }, [{ op: 'add', path: '/x/y', value: deep }]), refused('ERR_PATCH_FAILED', 0, '/x/y', /deeper than the limit of 1000/));
      assert.throws(() => applyPatch({ x: {} }, [{ op: 'add', path: '/x/y', value: [[1]] }], { maxDepth: 3 }), refused('ERR_PATCH_FAILED', 0, '/x/y'));
    });
  });

  it('is atomic: a failing op leaves the input as it was, and returns nothing', () => {
    const doc = { list: [1, 2, 3], obj: { a: 1 }, deep: { x: { y: [{ z: 1 }] } } };
    const input = deepFreeze(clone(doc));
    const patch = ops([
      { op: 'add', path: '/list/0', value: 0 },
      { op: 'remove', path: '/obj/a' },
      { op: 'replace', path: '/deep/x/y/0/z', value: 2 },
      { op: 'move', from: '/list/1', path: '/obj/moved' },
      { op: 'test', path: '/list/0', value: 'not zero' },
    ]);
    assert.throws(() => applyPatch(input, patch), refused('ERR_PATCH_FAILED', 4, '/list/0'));
    assert.deepEqual(input, doc);
    // Unfrozen input too (a mutation would not throw there).
    const loose = clone(doc);
    assert.throws(() => applyPatch(loose, patch));
    assert.deepEqual(loose, doc);
  });

  it('never changes its input, and shares untouched subtrees with it', () => {
    const input = deepFreeze({ keep: { big: [1, 2, 3] }, edit: { a: 1, inner: { x: 1 } }, list: [{ id: 1 }, { id: 2 }] });
    const out = applyPatch(input, [
      { op: 'replace', path: '/edit/a', value: 2 },
      { op: 'move', from: '/list/0', path: '/list/1' },
      { op: 'add', path: '/list/-', value: { id: 3 } },
    ]) as typeof input & { list: JsonObject[] };
    assert.deepEqual(out, { keep: { big: [1, 2, 3] }, edit: { a: 2, inner: { x: 1 } }, list: [{ id: 2 }, { id: 1 }, { id: 3 }] });
    assert.equal(out.keep, input.keep);
    assert.equal(out.edit.inner, input.edit.inner);
    assert.equal(out.list[0], input.list[1]);
    assert.notEqual(out.edit, input.edit);
  });

  it('copies values out of the patch', () => {
    const patch = ops([{ op: 'add', path: '/a', value: { list: [1] } }]);
    const out = applyPatch({}, patch) as { a: { list: number[] } };
    (patch[0] as unknown as { value: { list: number[] } }).value.list.push(2);
    assert.deepEqual(out, { a: { list: [1] } });
  });

  it('keeps a copy and its source apart when one is changed later in the patch', () => {
    const out = applyPatch({ a: { n: 1, list: [1] } }, [
      { op: 'replace', path: '/a/n', value: 2 },
      { op: 'copy', from: '/a', path: '/b' },
      { op: 'replace', path: '/b/n', value: 3 },
      { op: 'add', path: '/a/list/-', value: 2 },
    ]);
    assert.deepEqual(out, { a: { n: 2, list: [1, 2] }, b: { n: 3, list: [1] } });
  });

  it('bounds what copies duplicate: the root copied into itself 24 times is refused at the 17th copy, in linear time', () => {
    const doubling = (n: number): Operation[] => ops(Array.from({ length: n }, (_, i) => ({ op: 'copy', from: '', path: `/k${i}` })));
    // Each copy doubles the document: 16 copies make 2^17 - 1 values, past the default 100 000.
    const started = performance.now();
    assert.throws(() => applyPatch({}, doubling(24)), refused('ERR_PATCH_FAILED', 16, '/k16', /copies would duplicate more than 100000 values/));
    assert.ok(performance.now() - started < 1000, 'refused in linear time');
    // Within the budget, the copies are there and independent, and the depth is still checked.
    const fine = applyPatch({ v: 1 }, doubling(5), { maxCopy: 100 }) as JsonObject;
    assert.equal(JSON.stringify(fine).length > 0, true);
    assert.deepEqual((fine.k4 as JsonObject).k3, (fine as JsonObject).k3);
    assert.throws(() => applyPatch({ v: 1 }, doubling(6), { maxCopy: 100 }), refused('ERR_PATCH_FAILED', 6 - 1, '/k5', /more than 100 values/));
    assert.throws(() => applyPatch({ a: { b: {} } }, ops([{ op: 'copy', from: '/a', path: '/a/b/c' }]), { maxDepth: 3 }), refused('ERR_PATCH_FAILED', 0, '/a/b/c', /deeper than the limit of 3/));
    assert.throws(() => applyPatch({}, [], { maxCopy: -1 }), (err: unknown) => err instanceof StateError && err.code === 'ERR_INVALID_OPTION');
  });

  it('applies ops in order, each to the result of the last', () => {
    const out = applyPatch([1, 2, 3], [
      { op: 'remove', path: '/0' },
      { op: 'remove', path: '/0' },
      { op: 'add', path: '/1', value: 4 },
      { op: 'move', from: '/0', path: '/-' },
      { op: 'test', path: '', value: [4, 3] },
    ]);
    assert.deepEqual(out, [4, 3]);
  });

  it('sets and removes a "__proto__" member as data', () => {
    const out = applyPatch({}, [{ op: 'add', path: '/__proto__', value: { polluted: true } }]) as JsonObject;
    assert.ok(Object.prototype.hasOwnProperty.call(out, '__proto__'));
    assert.equal(Object.getPrototypeOf(out), Object.prototype);
    assert.equal(({} as JsonObject)['polluted'], undefined);
    assert.deepEqual(applyPatch(out, [{ op: 'remove', path: '/__proto__' }]), {});
  });
});
