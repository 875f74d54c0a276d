import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StateError, applyPatch, clone, deepEqual, diff } from '../src/index.js';
import type { DiffOptions, JsonObject, JsonValue, Operation } from '../src/index.js';

/** diff, then check the patch really takes a to b. */
function check(a: JsonValue, b: JsonValue, options?: DiffOptions): Operation[] {
  const patch = diff(a, b, options);
  assert.ok(deepEqual(applyPatch(a, patch), b), `patch ${JSON.stringify(patch)} does not take ${JSON.stringify(a)} to ${JSON.stringify(b)}`);
  return patch;
}

function todos(n: number): JsonObject[] {
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, title: `todo ${i + 1}`, done: false }));
}

function notJson(path: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof StateError, String(err));
    assert.equal(err.code, 'ERR_NOT_JSON');
    assert.equal(err.path, path);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

describe('diff', () => {
  it('gives [] for equal values, shared or not', () => {
    const doc = { a: [1, { b: 'c' }], d: null, e: { f: true } };
    for (const v of [null, 0, 'x', true, [], {}, doc] as JsonValue[]) {
      assert.deepEqual(diff(v, v), []);
      assert.deepEqual(diff(v, clone(v)), []);
    }
    assert.deepEqual(diff({ a: 1, b: 2 }, { b: 2, a: 1 }), [], 'key order is not a change');
    assert.deepEqual(diff(0, -0), []);
  });

  it('replaces at the root when the kind changes', () => {
    assert.deepEqual(check(1, 'x'), [{ op: 'replace', path: '', value: 'x' }]);
    assert.deepEqual(check({}, []), [{ op: 'replace', path: '', value: [] }]);
    assert.deepEqual(check({ a: [1] }, { a: { 0: 1 } }), [{ op: 'replace', path: '/a', value: { 0: 1 } }]);
    assert.deepEqual(check({ a: null }, { a: {} }), [{ op: 'replace', path: '/a', value: {} }]);
  });

  it('adds, removes and replaces object members, escaping / and ~ (RFC 6901)', () => {
    assert.deepEqual(check({ 'a/b': 1, 'm~n': 2, keep: 0 }, { 'm~n': 3, '~1': 4, keep: 0, '': 5 }), [
      { op: 'remove', path: '/a~1b' },
      { op: 'replace', path: '/m~0n', value: 3 },
      { op: 'add', path: '/~01', value: 4 },
      { op: 'add', path: '/', value: 5 },
    ]);
    assert.deepEqual(check({ x: { 'a/b': { '~': 1 } } }, { x: { 'a/b': { '~': 2 } } }), [{ op: 'replace', path: '/x/a~1b/~0', value: 2 }]);
  });

  it('copies values into the patch', () => {
    const b = { a: { deep: [1] } };
    const patch = diff({}, b);
    b.a.deep.push(2);
    assert.deepEqual(patch, [{ op: 'add', path: '/a', value: { deep: [1] } }]);
  });

  it('handles a "__proto__" member as data, without touching prototypes', () => {
    const b = JSON.parse('{"__proto__": {"polluted": true}, "x": 1}') as JsonValue;
    const patch = check({ x: 1 }, b);
    assert.deepEqual(patch, [{ op: 'add', path: '/__proto__', value: JSON.parse('{"polluted": true}') }]);
    const out = applyPatch({ x: 1 }, patch) as JsonObject;
    assert.ok(Object.prototype.hasOwnProperty.call(out, '__proto__'));
    assert.equal(Object.getPrototypeOf(out), Object.prototype);
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    assert.deepEqual(check(b, { x: 1 }), [{ op: 'remove', path: '/__proto__' }]);
  });

  describe('arrays of objects with an id, diffed by key', () => {
    it('a moved element is one move', () => {
      const a = { list: todos(10) };
      const list = a.list.slice();
      const [seven] = list.splice(7, 1);
      list.splice(2, 0, seven!);
      assert.deepEqual(check(a, { list }), [{ op: 'move', from: '/list/7', path: '/list/2' }]);
      assert.deepEqual(check(a, { list: [...a.list.slice(1), a.list[0]!] }), [{ op: 'move', from: '/list/0', path: '/list/9' }]);
      assert.deepEqual(check(a, { list: [a.list[9]!, ...a.list.slice(0, 9)] }), [{ op: 'move', from: '/list/9', path: '/list/0' }]);
    });

    it('an inserted element is one add, a deleted one one remove', () => {
      const a = { list: todos(10) };
      const added = { id: 99, title: 'new', done: false };
      assert.deepEqual(check(a, { list: [...a.list.slice(0, 4), added, ...a.list.slice(4)] }), [{ op: 'add', path: '/list/4', value: added }]);
      assert.deepEqual(check(a, { list: [...a.list, added] }), [{ op: 'add', path: '/list/10', value: added }]);
      assert.deepEqual(check(a, { list: [...a.list.slice(0, 3), ...a.list.slice(4)] }), [{ op: 'remove', path: '/list/3' }]);
      assert.deepEqual(check(a, { list: a.list.slice(1) }), [{ op: 'remove', path: '/list/0' }]);
    });

    it('a changed field of one element is one replace at its index', () => {
      const a = { list: todos(10) };
      const list = a.list.slice();
      list[4] = { ...list[4]!, done: true };
      assert.deepEqual(check(a, { list }), [{ op: 'replace', path: '/list/4/done', value: true }]);
    });

    it('a moved and changed element is a move, then changes at its new index', () => {
      const a = { list: todos(5) };
      const list = [{ ...a.list[4]!, title: 'first now' }, ...a.list.slice(0, 4)];
      assert.deepEqual(check(a, { list }), [
        { op: 'move', from: '/list/4', path: '/list/0' },
        { op: 'replace', path: '/list/0/title', value: 'first now' },
      ]);
    });

    it('removes, moves, adds and edits together, in an order that applies', () => {
      const a = todos(8);
      const b = [a[5]!, { id: 'x', title: 'x' }, a[1]!, { ...a[0]!, done: true }, a[7]!, { id: 'y' }, a[3]!];
      const patch = check(a, b);
      assert.deepEqual(
        patch.map((op) => op.op),
        // 3, 5 and 7 go; of 6, 2, 1, 8, 4 (old order 1, 2, 4, 6, 8) two can stay put.
        ['remove', 'remove', 'remove', 'move', 'move', 'move', 'add', 'add', 'replace'],
      );
    });

    it('string and number ids are both keys, and differ (1 is not "1")', () => {
      const a = [{ id: 'a' }, { id: 'b' }, { id: 1 }];
      assert.deepEqual(check(a, [a[2]!, a[0]!, a[1]!]), [{ op: 'move', from: '/2', path: '/0' }]);
      assert.deepEqual(check([{ id: 1, v: 0 }], [{ id: '1', v: 0 }]), [
        { op: 'remove', path: '/0' },
        { op: 'add', path: '/0', value: { id: '1', v: 0 } },
      ]);
    });

    it('a full shuffle is moves only, one per element off the longest kept run', () => {
      const a = todos(200);
      const b = a.slice();
      let s = 12345;
      for (let i = b.length - 1; i > 0; i--) {
        s = (s * 1103515245 + 12345) % 2 ** 31;
        const j = s % (i + 1);
        [b[i], b[j]] = [b[j]!, b[i]!];
      }
      const patch = check(a, b);
      assert.ok(patch.every((op) => op.op === 'move'));
      assert.ok(patch.length < 200 && patch.length > 150, `${patch.length} moves`);
    });

    it('the key member is an option, per path too, with * for one segment', () => {
      const cards = (n: number) => Array.from({ length: n }, (_, i) => ({ cardId: `c${i}`, text: String(i) }));
      const a = { todos: [{ uid: 1 }, { uid: 2 }, { uid: 3 }], boards: [{ cards: cards(4) }, { cards: cards(4) }] };
      const b = clone(a) as typeof a;
      b.todos.push(b.todos.shift()!);
      b.boards[1]!.cards.push(b.boards[1]!.cards.shift()!);
      const options = { keys: { '/todos': 'uid', '/boards/*/cards': 'cardId' } };
      assert.deepEqual(check(a, b, options), [
        { op: 'move', from: '/todos/0', path: '/todos/2' },
        { op: 'move', from: '/boards/1/cards/0', path: '/boards/1/cards/3' },
      ]);
      assert.deepEqual(check(a.todos, b.todos, { key: 'uid' }), [{ op: 'move', from: '/0', path: '/2' }]);
      // Without the option these arrays are diffed by position: no moves.
      assert.ok(check(a, b).every((op) => op.op !== 'move'));
      // The more specific pattern wins.
      assert.ok(check(a, b, { keys: { '/boards/*/cards': 'nope', '/boards/1/cards': 'cardId' } }).some((op) => op.op === 'move'));
    });

    it('key: null, or null for a path, turns diffing by key off', () => {
      const a = { list: todos(5), other: todos(5) };
      const b = { list: [...a.list.slice(1), a.list[0]!], other: [...a.other.slice(1), a.other[0]!] };
      assert.ok(check(a, b, { key: null }).every((op) => op.op !== 'move'));
      const patch = check(a, b, { keys: { '/list': null } });
      assert.deepEqual(patch.filter((op) => op.op === 'move'), [{ op: 'move', from: '/other/0', path: '/other/4' }]);
      assert.ok(check(a, b, { key: null, keys: { '/other': 'id' } }).some((op) => op.op === 'move'));
    });

    it('falls back to diffing by position when keys repeat, are missing, or are not strings or numbers', () => {
      const rotate = <T>(list: T[]) => [...list.slice(1), list[0]!];
      for (const a of [
        [{ id: 1 }, { id: 1 }, { id: 2 }, { id: 3 }],
        [{ id: 1 }, { id: 2 }, { name: 'no id' }, { id: 3 }],
        [{ id: 1 }, { id: 2 }, { id: null }, { id: 3 }],
        [{ id: 1 }, { id: 2 }, { id: { nested: true } }, { id: 3 }],
        [{ id: 1 }, { id: 2 }, 'not an object', { id: 3 }],
        [{ id: 1 }, { id: 2 }, [1], { id: 3 }],
      ] as JsonValue[][]) {
        const patch = check(a, rotate(a));
        assert.ok(patch.every((op) => op.op !== 'move'), JSON.stringify(patch));
      }
      // Keys unique within each array but one array has a duplicate: also by position.
      assert.ok(check([{ id: 1 }, { id: 2 }], [{ id: 2 }, { id: 1 }, { id: 1 }]).every((op) => op.op !== 'move'));
    });
  });

  describe('other arrays, diffed by longest common subsequence', () => {
    it('inserts and removes in the middle without rewriting the tail', () => {
      const a = Array.from({ length: 1000 }, (_, i) => i);
      assert.deepEqual(check(a, [...a.slice(0, 500), -1, ...a.slice(500)]), [{ op: 'add', path: '/500', value: -1 }]);
      assert.deepEqual(check(a, [...a.slice(0, 500), ...a.slice(501)]), [{ op: 'remove', path: '/500' }]);
      assert.deepEqual(check(a, [-1, ...a]), [{ op: 'add', path: '/0', value: -1 }]);
      const rows = a.map((i) => ({ row: i }));
      assert.deepEqual(check(rows, [...rows.slice(0, 10), ...rows.slice(11)]), [{ op: 'remove', path: '/10' }]);
    });

    it('keeps indexes right as ops apply in order', () => {
      assert.deepEqual(check([1, 2, 3, 4, 5], [1, 3, 4, 6, 5, 7]), [
        { op: 'remove', path: '/1' },
        { op: 'add', path: '/3', value: 6 },
        { op: 'add', path: '/5', value: 7 },
      ]);
      assert.deepEqual(check(['a', 'b', 'c'], ['c', 'b', 'a']), [
        { op: 'replace', path: '/0', value: 'c' },
        { op: 'replace', path: '/2', value: 'a' },
      ]);
      assert.deepEqual(check(['a', 'b', 'c', 'd'], ['b', 'c', 'd', 'a']), [
        { op: 'remove', path: '/0' },
        { op: 'add', path: '/3', value: 'a' },
      ]);
      check([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]);
      check([], [1, 2, 3]);
      check([1, 2, 3], []);
      check([[1], [2], [3]], [[3], [1], [2, 2]]);
    });

    it('diffs a changed element in place rather than replacing it whole', () => {
      assert.deepEqual(check([{ a: 1, b: 2 }, 'x'], [{ a: 1, b: 3 }, 'x']), [{ op: 'replace', path: '/0/b', value: 3 }]);
    });

    it('beyond maxLcsCells pairs elements by index, still exactly', () => {
      const a = Array.from({ length: 50 }, (_, i) => i);
      const b = [...a.slice(10), ...a.slice(0, 10), 99];
      const patch = check(a, b, { maxLcsCells: 0 });
      assert.ok(patch.every((op) => op.op === 'replace' || op.op === 'add'));
      check(b, a, { maxLcsCells: 0 });
      check(a, b, { maxLcsCells: 100 });
    });
  });

  describe('refuses values JSON cannot hold, naming where', () => {
    const cases: [string, unknown, string, RegExp][] = [
      ['undefined member', { a: { b: undefined } }, '/a/b', /undefined/],
      ['undefined element', { a: [1, undefined] }, '/a/1', /undefined/],
      ['array hole', { a: [1, , 3] }, '/a/1', /undefined/],
      ['function', { f: () => 1 }, '/f', /a function/],
      ['symbol', { s: Symbol('x') }, '/s', /a symbol/],
      ['NaN', { n: [NaN] }, '/n/0', /NaN/],
      ['Infinity', { n: Infinity }, '/n', /Infinity/],
      ['-Infinity', { n: -Infinity }, '/n', /-Infinity/],
      ['bigint', { n: 10n }, '/n', /bigint \(10n\)/],
      ['Date', { when: new Date(0) }, '/when', /a Date/],
      ['Map', { m: new Map() }, '/m', /a Map/],
      ['Set', [new Set()], '/0', /a Set/],
      ['class instance', { x: new (class Point { x = 1 })() }, '/x', /a Point/],
      ['symbol key', { o: { [Symbol('k')]: 1 } }, '/o', /symbol keys/],
      ['boxed string', { s: new String('x') }, '/s', /a String/],
      ['escaped path', { 'a/b': { '~': undefined } }, '/a~1b/~0', /undefined/],
      ['root', undefined, '', /the root/],
    ];
    for (const [name, bad, path, pattern] of cases) {
      it(name, () => {
        assert.throws(() => diff({}, bad), notJson(path, pattern));
        assert.throws(() => diff({}, bad), /newValue/);
        assert.throws(() => diff(bad, {}), /oldValue/);
      });
    }

    it('cycles', () => {
      const a: Record<string, unknown> = { x: { y: [] as unknown[] } };
      ((a['x'] as Record<string, unknown>)['y'] as unknown[]).push(a['x']);
      assert.throws(() => diff({}, a), notJson('/x/y/0', /cycle.*\/x/));
      const self: Record<string, unknown> = {};
      self['me'] = self;
      assert.throws(() => diff(self, {}), notJson('/me', /cycle.*the root/));
    });

    it('but accepts a shared subtree that is not a cycle, and null-prototype objects', () => {
      const shared = { s: 1 };
      check({ a: shared, b: shared }, { a: shared, b: { s: 2 } });
      const bare = Object.assign(Object.create(null) as JsonObject, { k: 1 });
      assert.deepEqual(check({ k: 1 }, bare), []);
    });
  });

  it('refuses nesting deeper than the depth limit (1000, or a lower maxDepth)', () => {
    const nest = (n: number): JsonValue => {
      let v: JsonValue = 0;
      for (let i = 0; i < n; i++) v = i % 2 ? [v] : { d: v };
      return v;
    };
    assert.equal(check(nest(999), nest(1000)).length, 1);
    assert.throws(
      () => diff(nest(1001), null),
      (err: unknown) => err instanceof StateError && err.code === 'ERR_TOO_DEEP' && /limit of 1000/.test(err.message) && err.path.split('/').length === 1001,
    );
    assert.throws(() => diff(nest(11), null, { maxDepth: 10 }), { code: 'ERR_TOO_DEEP' });
    assert.deepEqual(diff(nest(1000), nest(1000)), []);
    assert.ok(check(nest(1000), nest(999)).length > 0);
    assert.throws(() => diff(1, 2, { maxDepth: 1001 }), { code: 'ERR_INVALID_OPTION' });
  });

  it('refuses bad options', () => {
    assert.throws(() => diff(1, 2, { key: 5 as unknown as string }), { code: 'ERR_INVALID_OPTION' });
    assert.throws(() => diff(1, 2, { keys: { nope: 'id' } }), { code: 'ERR_INVALID_OPTION' });
    assert.throws(() => diff(1, 2, { keys: { '/a': 3 as unknown as string } }), { code: 'ERR_INVALID_OPTION' });
    assert.throws(() => diff(1, 2, { maxLcsCells: -1 }), { code: 'ERR_INVALID_OPTION' });
  });

  describe('a one-field change in a 1 MB document gives a small patch', () => {
    const records = (keyed: boolean) =>
      Array.from({ length: 10_000 }, (_, i) => ({
        ...(keyed ? { id: `r${i}` } : {}),
        name: `record number ${i}`,
        email: `user${i}@example.com`,
        tags: ['alpha', 'beta'],
        score: i * 1.5,
        active: i % 3 === 0,
      }));
    for (const keyed of [true, false]) {
      it(keyed ? 'records with ids' : 'records without ids', () => {
        const a = { records: records(keyed), meta: { version: 1 } };
        assert.ok(JSON.stringify(a).length > 1_000_000);
        // An immutable update shares everything else...
        const list = a.records.slice();
        list[5000] = { ...list[5000]!, name: 'changed' };
        const b = { ...a, records: list };
        const expected = [{ op: 'replace', path: '/records/5000/name', value: 'changed' }];
        assert.deepEqual(check(a, b), expected);
        assert.ok(JSON.stringify(diff(a, b)).length < 200);
        // ...and a full copy shares nothing: the same patch, found structurally.
        const copy = clone(b) as typeof b;
        assert.deepEqual(diff(a, copy), expected);
      });
    }
  });
});
