import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fjpModule from 'fast-json-patch';
import { applyPatch, clone, deepEqual, diff } from '../src/index.js';
import type { JsonObject, JsonValue, Operation } from '../src/index.js';
import { Rng, pair, runSeed, value } from './helpers.js';

// fast-json-patch is CommonJS; its default export is the whole module.
const fjp = fjpModule as unknown as {
  applyPatch(doc: unknown, patch: unknown[], validate: boolean, mutate: boolean): { newDocument: unknown };
  applyOperation(doc: unknown, op: unknown, validate: boolean, mutate: boolean): { newDocument: unknown };
  compare(a: unknown, b: unknown): Operation[];
};

const RUNS = Number(process.env['STATE_RUNS'] ?? 3000);
const SEED = runSeed();

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s.length > 2000 ? `${s.slice(0, 2000)}...` : s;
}

describe(`diff and applyPatch on random documents (STATE_SEED=${SEED}, ${RUNS} runs)`, () => {
  it('diff(a, b) applied by us and by fast-json-patch gives b; a is untouched', (t) => {
    t.diagnostic(`seed ${SEED}: replay with STATE_SEED=${SEED}`);
    const rng = new Rng(SEED);
    let ops = 0;
    for (let run = 0; run < RUNS; run++) {
      const [a, b] = pair(rng);
      const before = JSON.stringify(a);
      // One pair in five each: arrays paired by index, no keys, keys named per path.
      const options = [{}, { maxLcsCells: 4 }, { key: null }, { keys: { '/list': 'title', '/root/*': 'n' } }, {}][run % 5]!;
      const where = () => `STATE_SEED=${SEED} run ${run} options ${JSON.stringify(options)}\na = ${show(a)}\nb = ${show(b)}`;
      let patch: Operation[];
      try {
        patch = diff(a, b, options);
      } catch (err) {
        assert.fail(`diff threw ${String(err)}\n${where()}`);
      }
      ops += patch.length;
      const p = () => `\npatch = ${show(patch)}`;
      // JSON's equality, not Object.is: -0 in b is written as 0 on the wire, and equals it.
      assert.ok(deepEqual(JSON.parse(JSON.stringify(patch)) as JsonValue, patch as unknown as JsonValue), `patch is not plain JSON\n${where()}${p()}`);
      if (deepEqual(a, b)) assert.equal(patch.length, 0, `equal values need no ops\n${where()}${p()}`);

      let ours: JsonValue;
      try {
        ours = applyPatch(a, patch);
      } catch (err) {
        assert.fail(`our applyPatch threw ${String(err)}\n${where()}${p()}`);
      }
      assert.ok(deepEqual(ours, b), `our applyPatch gave ${show(ours)}\n${where()}${p()}`);
      assert.equal(JSON.stringify(a), before, `applyPatch changed its input\n${where()}${p()}`);

      let theirs: unknown;
      try {
        theirs = fjp.applyPatch(clone(a), patch, true, false).newDocument;
      } catch (err) {
        assert.fail(`fast-json-patch refused the patch: ${String(err)}\n${where()}${p()}`);
      }
      assert.ok(deepEqual(theirs, b), `fast-json-patch gave ${show(theirs)}\n${where()}${p()}`);
    }
    t.diagnostic(`${RUNS} pairs, ${ops} ops in all`);
  });

  it('long arrays, keyed and not, with many moves, inserts, deletes and edits', (t) => {
    const rng = new Rng(SEED ^ 0x1b873593);
    let moves = 0;
    for (let run = 0; run < RUNS / 10; run++) {
      const n = 20 + rng.int(280);
      const keyed = rng.chance(0.6);
      const a: JsonValue[] = Array.from({ length: n }, (_, i) => (keyed ? { id: rng.chance(0.5) ? i : `s${i}`, v: rng.int(5) } : rng.int(30)));
      const b = a.slice();
      const edits = rng.chance(0.2) ? n : 1 + rng.int(10);
      for (let e = 0; e < edits; e++) {
        const r = rng.int(4);
        if (r === 0 && b.length > 1) b.splice(rng.int(b.length), 0, b.splice(rng.int(b.length), 1)[0]!);
        else if (r === 1 && b.length > 0) b.splice(rng.int(b.length), 1);
        else if (r === 2) b.splice(rng.int(b.length + 1), 0, keyed ? { id: `new${run}-${e}`, v: 0 } : rng.int(30));
        else if (b.length > 0) {
          const at = rng.int(b.length);
          b[at] = keyed ? { ...(b[at] as JsonObject), v: rng.int(5) } : rng.int(30);
        }
      }
      const where = () => `STATE_SEED=${SEED} long run ${run}\na = ${show(a)}\nb = ${show(b)}`;
      const patch = diff(a, b, { maxLcsCells: rng.chance(0.2) ? 100 : 1e6 });
      moves += patch.filter((op) => op.op === 'move').length;
      assert.ok(deepEqual(applyPatch(a, patch), b), `ours\n${where()}\npatch = ${show(patch)}`);
      assert.ok(deepEqual(fjp.applyPatch(clone(a), patch, true, false).newDocument, b), `fast-json-patch\n${where()}\npatch = ${show(patch)}`);
      if (keyed) assert.ok(patch.every((op) => op.op !== 'replace' || op.path.endsWith('/v')), `keyed arrays: replaces only inside elements\n${where()}`);
    }
    t.diagnostic(`${RUNS / 10} long arrays, ${moves} moves`);
  });

  it('patches from fast-json-patch compare(a, b) applied by us give b', (t) => {
    const rng = new Rng(SEED ^ 0x5bd1e995);
    let checked = 0;
    for (let run = 0; run < RUNS; run++) {
      const [a, b] = pair(rng);
      if (typeof a !== 'object' || a === null || typeof b !== 'object' || b === null) continue;
      if (Array.isArray(a) !== Array.isArray(b)) continue; // compare() only diffs like with like
      const where = () => `STATE_SEED=${SEED} run ${run}\na = ${show(a)}\nb = ${show(b)}`;
      const patch = fjp.compare(a, b);
      const ours = applyPatch(a, patch);
      assert.ok(deepEqual(ours, b), `our applyPatch gave ${show(ours)}\n${where()}\npatch = ${show(patch)}`);
      checked++;
    }
    t.diagnostic(`${checked} pairs checked`);
    assert.ok(checked > RUNS / 2);
  });

  it('random single ops (add, remove, replace, move, copy, test) do what fast-json-patch does, or both refuse', (t) => {
    const rng = new Rng(SEED ^ 0x27d4eb2f);
    let applied = 0;
    let refused = 0;
    let lax = 0;
    for (let run = 0; run < RUNS; run++) {
      const doc = { root: value(rng, 3), list: [1, 2, { x: [3, 4] }] } as JsonValue;
      const paths = allPaths(doc);
      const path = rng.chance(0.9) ? rng.pick(paths) : rng.pick(paths) + rng.pick(['/-', '/0', '/zz', '/5']);
      const kind = rng.pick(['add', 'remove', 'replace', 'move', 'copy', 'test'] as const);
      let op: Operation;
      if (kind === 'move' || kind === 'copy') op = { op: kind, from: rng.pick(paths), path };
      else if (kind === 'remove') op = { op: kind, path };
      else if (kind === 'test') op = { op: kind, path, value: rng.chance(0.5) ? clone(get(doc, path) ?? null) : value(rng, 1) };
      else op = { op: kind, path, value: value(rng, 2) };
      const where = `STATE_SEED=${SEED} run ${run}\ndoc = ${show(doc)}\nop = ${show(op)}`;
      // RFC 6902 leaves removing the whole document undefined; fast-json-patch gives null, we refuse.
      if (op.op === 'remove' && op.path === '') continue;
      // RFC 6902 defines move as remove-then-add; fast-json-patch checks a move's
      // target against the document before the remove, so compare to the definition.
      let reference: unknown[] = [op];
      if (op.op === 'move' && op.from !== op.path) {
        reference = op.path.startsWith(`${op.from}/`) ? [] : [{ op: 'remove', path: op.from }, { op: 'add', path: op.path, value: get(doc, op.from) ?? null }];
      }
      let theirs: unknown;
      let theirError: unknown = null;
      try {
        if (reference.length === 0) throw new Error('a move into its own child');
        theirs = fjp.applyPatch(clone(doc), reference, true, true).newDocument;
      } catch (err) {
        theirError = err;
      }
      let ours: unknown;
      let ourError: unknown = null;
      try {
        ours = applyPatch(doc, [op]);
      } catch (err) {
        ourError = err;
      }
      if (theirError === null && ourError === null) {
        assert.ok(deepEqual(ours, theirs), `we gave ${show(ours)}, fast-json-patch ${show(theirs)}\n${where}`);
        applied++;
      } else if (
        theirError === null &&
        op.op === 'copy' &&
        /out of range/.test(String(ourError))
      ) {
        // fast-json-patch does not check a copy's target index; RFC 6902 says it is an error.
        lax++;
      } else {
        assert.ok(theirError !== null && ourError !== null, `we ${ourError ? `refused: ${String(ourError)}` : 'applied it'}, fast-json-patch ${theirError ? `refused: ${String(theirError)}` : 'applied it'}\n${where}`);
        refused++;
      }
    }
    t.diagnostic(`${applied} applied alike, ${refused} refused by both, ${lax} copies refused by us only (RFC errors fast-json-patch lets through)`);
  });
});

function allPaths(v: JsonValue, prefix = '', out: string[] = ['']): string[] {
  if (typeof v !== 'object' || v === null) return out;
  const entries: [string, JsonValue][] = Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v);
  for (const [k, x] of entries) {
    const p = `${prefix}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
    out.push(p);
    allPaths(x, p, out);
  }
  return out;
}

function get(v: JsonValue, path: string): JsonValue | undefined {
  if (path === '') return v;
  let node: JsonValue | undefined = v;
  for (const raw of path.slice(1).split('/')) {
    const k = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (typeof node !== 'object' || node === null || !Object.prototype.hasOwnProperty.call(node, k)) return undefined;
    node = (node as Record<string, JsonValue>)[k];
  }
  return node;
}
