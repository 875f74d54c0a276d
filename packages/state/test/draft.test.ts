/**
 * produce: a draft function's result, the draft copying on write. Checked against the same
 * function run on a deep copy (what a draft used to be), on random documents and random edits,
 * and for what copying on write adds: the untouched parts shared, the value never changed, the
 * result a tree, the draft dead once the result is made. And cloneChanges, its counterpart for a
 * new value made the immutable way.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { clone, cloneChanges, deepEqual, diff, produce, StateError } from '../src/index.js';
import type { JsonObject, JsonValue } from '../src/index.js';
import { pair, Rng, runSeed, scalar } from './helpers.js';

const RUNS = Number(process.env['STATE_RUNS'] ?? 3000);
const SEED = runSeed();

type Box = Record<string, unknown> & unknown[];

/** A small document, drawn from `rng` alone (so that two runs with the same seed draw the same). */
function doc(rng: Rng, depth: number): JsonValue {
  if (depth <= 0 || rng.chance(0.3)) return scalar(rng);
  if (rng.chance(0.5)) return Array.from({ length: rng.int(5) }, () => doc(rng, depth - 1));
  const out: JsonObject = {};
  // Defined, not set: "__proto__" as a key of its own, as JSON.parse makes it.
  for (let i = rng.int(5); i > 0; i--) Object.defineProperty(out, rng.pick(['a', 'b', 'c', 'id', '0', 'x/y', '__proto__']), { value: doc(rng, depth - 1), enumerable: true, writable: true, configurable: true });
  return out;
}

function isBox(value: unknown): value is Box {
  return typeof value === 'object' && value !== null;
}

/**
 * Random edits made in place to `root`, a draft or a plain copy: the same seed makes the same
 * edits to either, since a draft reads like the value it drafts. Never places a container inside
 * itself (only siblings are placed elsewhere).
 */
function edit(rng: Rng, root: Box): void {
  for (let step = 1 + rng.int(6); step > 0; step--) {
    let at: Box = root;
    // Down a few levels, where there is somewhere to go.
    for (let down = rng.int(4); down > 0; down--) {
      const keys = Array.isArray(at) ? at.map((_, i) => i) : Object.keys(at);
      const inner = keys.filter((k) => isBox((at as Record<string | number, unknown>)[k]));
      if (inner.length === 0) break;
      at = (at as Record<string | number, unknown>)[rng.pick(inner)] as Box;
    }
    if (Array.isArray(at)) {
      const n = at.length;
      switch (rng.int(11)) {
        case 0:
          at.push(doc(rng, 2));
          break;
        case 1:
          at.pop();
          break;
        case 2:
          at.shift();
          break;
        case 3:
          at.unshift(doc(rng, 1), doc(rng, 1));
          break;
        case 4:
          at.splice(rng.int(n + 1), rng.int(3), doc(rng, 2));
          break;
        case 5:
          at.sort((x, y) => (JSON.stringify(x) < JSON.stringify(y) ? -1 : JSON.stringify(x) > JSON.stringify(y) ? 1 : 0));
          break;
        case 6:
          at.reverse();
          break;
        case 7:
          at.length = rng.int(n + 1);
          break;
        case 8:
          if (n > 1) at[rng.int(n)] = at[rng.int(n)];
          break;
        case 9:
          // A new container holding parts of the draft.
          if (n > 0) at[rng.int(n)] = { kept: at.slice(0, 2), n: rng.int(9) } as never;
          break;
        default:
          if (n > 0) at[rng.int(n)] = doc(rng, 2) as never;
      }
    } else {
      const keys = Object.keys(at);
      // ("__proto__" only where it is a key already: set on a plain object without one, it is its prototype.)
      const key = rng.chance(0.7) && keys.length > 0 ? rng.pick(keys) : rng.pick(['a', 'b', 'new', '~0']);
      switch (rng.int(5)) {
        case 0:
          delete at[key];
          break;
        case 1:
          if (keys.length > 1) at[key] = at[rng.pick(keys)];
          break;
        case 2:
          // Set to what is there already.
          if (keys.includes(key)) at[key] = at[key];
          break;
        case 3:
          Object.assign(at, { spread: { ...(at as object) } });
          break;
        default:
          at[key] = doc(rng, 2) as never;
      }
    }
  }
}

/** Whether no object or array appears twice in `value`. */
function isTree(value: unknown, seen = new Set<object>()): boolean {
  if (!isBox(value)) return true;
  if (seen.has(value)) return false;
  seen.add(value);
  return Object.values(value).every((child) => isTree(child, seen));
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s.length > 1500 ? `${s.slice(0, 1500)}...` : s;
}

describe(`produce on random documents and random edits (STATE_SEED=${SEED}, ${RUNS} runs)`, () => {
  it('gives what the same edits make of a deep copy; the value is untouched, the result a tree of JSON', (t) => {
    t.diagnostic(`seed ${SEED}: replay with STATE_SEED=${SEED}`);
    const rng = new Rng(SEED);
    for (let run = 0; run < RUNS; run++) {
      const start = rng.chance(0.5) ? { root: doc(rng, 4), list: doc(rng, 2) } : doc(rng, 4);
      if (!isBox(start)) continue;
      const editSeed = rng.int(2 ** 31);
      const before = JSON.stringify(start);
      const expected = clone(start) as Box;
      edit(new Rng(editSeed), expected);
      const where = `STATE_SEED=${SEED} run ${run}\nstart = ${show(start)}\nexpected = ${show(expected)}`;
      let result: JsonValue;
      try {
        result = produce(start, (draft) => edit(new Rng(editSeed), draft as Box));
      } catch (error) {
        assert.fail(`produce threw ${String(error)}\n${where}`);
      }
      assert.equal(JSON.stringify(result), JSON.stringify(expected), `not what the edits make of a copy\n${where}`);
      assert.equal(JSON.stringify(start), before, `the value changed\n${where}`);
      assert.ok(isTree(result), `the result shares a part with itself\n${where}`);
      // Whatever the result shares with the value is unchanged by the edits.
      assert.ok(deepEqual(diff(start, result), diff(clone(start), clone(result))), `a shared part is not as it was\n${where}`);
    }
  });
});

describe('produce: what copying on write keeps', () => {
  const big = (): JsonObject => ({ items: Array.from({ length: 100 }, (_, i) => ({ id: i, done: false, tags: ['a'] })), meta: { owner: 'ann', limits: { max: 5 } } });

  it('shares every part the change did not reach, and copies each one it did, up to the root', () => {
    const value = big();
    const items = value['items'] as JsonObject[];
    const next = produce(value, (d) => {
      ((d as JsonObject)['items'] as JsonObject[])[7]!['done'] = true;
    }) as JsonObject;
    const nextItems = next['items'] as JsonObject[];
    assert.notEqual(next, value);
    assert.notEqual(nextItems, items);
    assert.notEqual(nextItems[7], items[7]);
    assert.equal(nextItems[7]!['tags'], items[7]!['tags'], 'an untouched array inside a changed element');
    for (const i of [0, 6, 8, 99]) assert.equal(nextItems[i], items[i], `item ${i}`);
    assert.equal(next['meta'], value['meta']);
    assert.equal(items[7]!['done'], false, 'the value is not changed');
    assert.deepEqual(diff(value, next), [{ op: 'replace', path: '/items/7/done', value: true }]);
  });

  it('gives the value itself when the function changed nothing, or set what was there', () => {
    const value = big();
    assert.equal(produce(value, () => {}), value);
    assert.equal(
      produce(value, (d) => {
        const draft = d as JsonObject;
        draft['meta'] = draft['meta']!;
        ((draft['items'] as JsonObject[])[3] as JsonObject)['id'] = 3;
      }),
      value,
    );
  });

  it('places a part of the draft twice as two copies, and a part moved deeper within the depth limit only', () => {
    const value = { a: { b: { c: 1 } }, deep: { x: { y: { z: {} } } } } as JsonObject;
    const next = produce(value, (d) => {
      const draft = d as JsonObject;
      draft['copy'] = draft['a']!;
    }) as JsonObject;
    assert.deepEqual(next['copy'], next['a']);
    assert.ok(isTree(next), 'a tree');
    // `deep` is 4 levels of containers at depth 1: under `a/b` (depth 3) it reaches 7.
    const move = (d: JsonValue): void => {
      const draft = d as { a: { b: JsonObject }; deep: JsonValue };
      draft.a.b['deep'] = draft.deep;
    };
    assert.doesNotThrow(() => produce(value, move, { maxDepth: 7 }));
    assert.throws(
      () => produce(value, move, { maxDepth: 6 }),
      (error: unknown) => error instanceof StateError && error.code === 'ERR_TOO_DEEP' && error.path === '/a/b/deep',
    );
  });

  it('refuses, naming where, what JSON cannot hold and a draft placed inside itself', () => {
    const cases: [string, (d: Record<string, unknown>) => void, string, string][] = [
      ['undefined', (d) => void (d['a'] = undefined), 'ERR_NOT_JSON', '/a'],
      ['NaN deep in a new value', (d) => void (d['a'] = { list: [1, Number.NaN] }), 'ERR_NOT_JSON', '/a/list/1'],
      ['a Date in a drafted child', (d) => void ((d['nested'] as Record<string, unknown>)['when'] = new Date()), 'ERR_NOT_JSON', '/nested/when'],
      ['a function', (d) => void (d['f'] = () => 1), 'ERR_NOT_JSON', '/f'],
      ['a symbol key', (d) => void (d[Symbol('s') as unknown as string] = 1), 'ERR_NOT_JSON', ''],
      ['a hole in an array', (d) => void ((d['list'] as unknown[])[5] = 1), 'ERR_NOT_JSON', '/list/2'],
      ['the draft inside itself', (d) => void ((d['nested'] as Record<string, unknown>)['loop'] = d), 'ERR_NOT_JSON', '/nested/loop'],
      [
        'a new object inside itself',
        (d) => {
          const o: Record<string, unknown> = {};
          o['self'] = o;
          d['o'] = o;
        },
        'ERR_NOT_JSON',
        '/o/self',
      ],
    ];
    for (const [what, change, code, path] of cases) {
      const value = { nested: { n: 1 }, list: [1, 2] } as JsonObject;
      assert.throws(
        () => produce(value, change as (d: JsonValue) => void),
        (error: unknown) => error instanceof StateError && error.code === code && error.path === path,
        what,
      );
      assert.deepEqual(value, { nested: { n: 1 }, list: [1, 2] }, `${what}: the value is untouched`);
    }
  });

  it('stops the draft and every part of it once the result is made', () => {
    let kept: JsonObject | undefined;
    let keptChild: JsonObject | undefined;
    const next = produce({ a: { n: 1 } }, (d) => {
      kept = d as JsonObject;
      keptChild = kept['a'] as JsonObject;
      keptChild['n'] = 2;
    });
    assert.throws(() => void (kept!['x'] = 1), TypeError);
    assert.throws(() => void (keptChild!['n'] = 3), TypeError);
    assert.deepEqual(next, { a: { n: 2 } });
  });

  it('takes a new value returned, finishing the parts of the draft in it, and refuses what is no value', async () => {
    const value = big();
    const next = produce(value, (d) => ({ ...(d as JsonObject), extra: 1 })) as JsonObject;
    assert.equal(next['items'], value['items'], 'an untouched part of the draft, in a new value, is the value’s own');
    assert.equal(next['extra'], 1);
    const refusals: [(d: JsonValue) => unknown, RegExp][] = [
      [(d) => ((d as JsonObject)['items'] as JsonValue[]).push(1), /changed its draft and also returned 101/],
      [(d) => (d as JsonObject)['meta'], /a part of its draft/],
      [(d) => ((d as JsonObject)['items'] as JsonValue[]).slice(0, 0).length, /in place of the whole value/],
      [async (d) => void ((d as JsonObject)['late'] = 1), /synchronously/],
    ];
    for (const [change, message] of refusals) {
      assert.throws(
        () => produce(value, change),
        (error: unknown) => error instanceof StateError && error.code === 'ERR_DRAFT_RESULT' && message.test(error.message),
        String(message),
      );
    }
    // A draft changed and changed back, and a new value returned: taken.
    const replaced = produce({ n: 1 }, (d) => {
      (d as JsonObject)['n'] = 2;
      (d as JsonObject)['n'] = 1;
      return { n: 5 };
    });
    assert.deepEqual(replaced, { n: 5 });
    // An async function that changes its draft after an await meets a dead draft: no unhandled rejection.
    let unhandled: unknown = null;
    const onUnhandled = (reason: unknown): void => void (unhandled = reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      assert.throws(() =>
        produce({ n: 1 }, async (d) => {
          await null;
          (d as JsonObject)['n'] = 2;
        }),
      );
      await new Promise((resolve) => setTimeout(resolve, 20));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    assert.equal(unhandled, null);
  });

  it('reads like the value: keys, `in`, length, Array.isArray, JSON, a key "__proto__" kept as data', () => {
    const value = JSON.parse('{"list":[1,{"x":2}],"__proto__":{"own":true},"s":"t"}') as JsonObject;
    const next = produce(value, (d) => {
      const draft = d as Record<string, unknown> & { list: unknown[] };
      assert.deepEqual(Object.keys(draft), ['list', '__proto__', 's']);
      assert.ok(Array.isArray(draft.list) && draft.list.length === 2 && 's' in draft && !('zz' in draft));
      assert.equal(JSON.stringify(draft), JSON.stringify(value));
      assert.equal(Object.getPrototypeOf(draft), Object.prototype);
      draft['__proto__'] = { replaced: 1 };
      draft.list.push(3);
    }) as JsonObject;
    assert.ok(Object.prototype.hasOwnProperty.call(next, '__proto__'));
    assert.equal(Object.getPrototypeOf(next), Object.prototype, 'the prototype is not set through the key');
    assert.deepEqual(JSON.parse(JSON.stringify(next)), JSON.parse('{"list":[1,{"x":2},3],"__proto__":{"replaced":1},"s":"t"}'));
  });

  it('takes a scalar value: the function returns the new one', () => {
    assert.equal(produce(1, () => undefined), 1);
    assert.equal(produce(1, (n) => (n as number) + 1), 2);
    assert.deepEqual(produce('a', () => ({ now: 'an object' })), { now: 'an object' });
  });
});

describe('cloneChanges: a new value made the immutable way', () => {
  /** Whether each container of `result` is `current`'s own at the same place, or else not `next`'s (a copy). */
  function sharesOnlyCurrent(result: unknown, next: unknown, current: unknown): boolean {
    if (!isBox(result)) return true;
    if (result === current) return true;
    if (result === next) return false;
    return Object.keys(result).every((key) =>
      sharesOnlyCurrent(
        (result as Record<string, unknown>)[key],
        (next as Record<string, unknown>)[key],
        isBox(current) && Array.isArray(current) === Array.isArray(result) && Object.prototype.hasOwnProperty.call(current, key) ? (current as Record<string, unknown>)[key] : undefined,
      ),
    );
  }

  it('equals the new value; keeps the current value’s parts found in their place, copies everything else (random documents)', (t) => {
    t.diagnostic(`seed ${SEED}: replay with STATE_SEED=${SEED}`);
    const rng = new Rng(SEED);
    for (let run = 0; run < RUNS; run++) {
      const [current, next] = pair(rng);
      const result = cloneChanges(next, current);
      const where = `STATE_SEED=${SEED} run ${run}\ncurrent = ${show(current)}\nnext = ${show(next)}`;
      assert.ok(deepEqual(result, next), `not equal to the new value\n${where}`);
      assert.ok(sharesOnlyCurrent(result, next, current), `holds a part of the new value that is not the current value's own in its place\n${where}`);
    }
  });

  it('shares an unchanged item, copies a moved one and a new one, and refuses what JSON cannot hold, naming where', () => {
    const current = { items: [{ id: 1 }, { id: 2 }, { id: 3 }], meta: { v: 1 } } as { items: JsonObject[]; meta: JsonObject };
    const added = { id: 4 };
    const next = { items: [current.items[0]!, current.items[2]!, added], meta: current.meta };
    const result = cloneChanges(next, current as unknown as JsonValue) as typeof current;
    assert.equal(result.items[0], current.items[0]);
    assert.equal(result.meta, current.meta);
    assert.notEqual(result.items[1], current.items[2], 'moved to another place: copied');
    assert.notEqual(result.items[2], added, 'the caller’s own object: copied');
    added.id = 99;
    assert.equal(result.items[2]!['id'], 4, 'changing it later does not change the result');
    assert.throws(
      () => cloneChanges({ items: [current.items[0], { when: new Date() }] }, current as unknown as JsonValue),
      (error: unknown) => error instanceof StateError && error.code === 'ERR_NOT_JSON' && error.path === '/items/1/when',
    );
  });
});
