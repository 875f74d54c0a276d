import type { JsonObject, JsonValue } from '../src/index.js';

/** mulberry32: a small seeded PRNG, so a failing run can be replayed with its seed. */
export class Rng {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(list: readonly T[]): T {
    return list[this.int(list.length)]!;
  }
}

/** The seed for this run: STATE_SEED from the environment, or a fresh one. */
export function runSeed(): number {
  const env = process.env['STATE_SEED'];
  return env !== undefined && env !== '' ? Number(env) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
}

// Keys that need escaping, look like indexes, are empty, or are not ASCII.
const KEYS = ['a', 'b', 'c', 'name', 'value', 'x/y', '/', '~', '~1', '~0', 'a~1b', '~/', '', '0', '1', '-', 'é', '日本', '😀', 'two words', 'constructor', 'toString'];
const STRINGS = ['', 'a', 'hello', 'x/y', '~0', 'é', '日本語', '😀🎉', 'quote " and \\ backslash', 'line\nbreak', '\u0000', '\u2028', 'long '.repeat(20)];

export function scalar(rng: Rng): JsonValue {
  switch (rng.int(8)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.int(10);
    case 3:
      return rng.int(2000001) - 1000000;
    case 4:
      return Math.round((rng.next() - 0.5) * 1e6) / 1000;
    case 5:
      return rng.pick([0, -0, -1, 1.5, 1e21, -1e-7, Number.MAX_SAFE_INTEGER]);
    default:
      return rng.pick(STRINGS);
  }
}

let nextId = 1;

function newId(rng: Rng): string | number {
  const n = nextId++;
  return rng.chance(0.5) ? n : `k${n}`;
}

/** A keyed element: an object with a unique "id" and a few fields. */
export function keyedElement(rng: Rng, depth: number): JsonObject {
  const el: JsonObject = { id: newId(rng) };
  const fields = rng.int(4);
  for (let i = 0; i < fields; i++) el[rng.pick(['title', 'done', 'n', 'tags', 'a/b'])] = depth > 0 && rng.chance(0.3) ? value(rng, depth - 1) : scalar(rng);
  return el;
}

export function value(rng: Rng, depth: number): JsonValue {
  const r = rng.int(10);
  if (depth <= 0 || r < 4) return scalar(rng);
  if (r < 6) {
    const obj: JsonObject = {};
    const n = rng.int(6);
    for (let i = 0; i < n; i++) obj[rng.pick(KEYS)] = value(rng, depth - 1);
    return obj;
  }
  if (r < 8) {
    const n = rng.int(7);
    const list: JsonValue[] = [];
    for (let i = 0; i < n; i++) list.push(rng.chance(0.5) ? scalar(rng) : value(rng, depth - 1));
    return list;
  }
  const n = rng.int(9);
  const list: JsonValue[] = [];
  for (let i = 0; i < n; i++) list.push(keyedElement(rng, depth - 1));
  return list;
}

function isKeyed(list: JsonValue[]): boolean {
  return list.length > 0 && list.every((el) => typeof el === 'object' && el !== null && !Array.isArray(el) && 'id' in el);
}

/**
 * A changed version of v, sharing unchanged subtrees with it the way an
 * immutable update would (so v is never modified).
 */
export function mutate(rng: Rng, v: JsonValue, depth: number): JsonValue {
  if (rng.chance(0.05)) return value(rng, depth);
  if (typeof v !== 'object' || v === null) return rng.chance(0.6) ? scalar(rng) : v;
  if (Array.isArray(v)) {
    const list = v.slice();
    if (isKeyed(list) && rng.chance(0.8)) {
      const moves = rng.int(3);
      for (let i = 0; i < moves && list.length > 1; i++) {
        const [el] = list.splice(rng.int(list.length), 1);
        list.splice(rng.int(list.length + 1), 0, el!);
      }
      if (rng.chance(0.1)) {
        for (let i = list.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [list[i], list[j]] = [list[j]!, list[i]!];
        }
      }
      const deletes = rng.int(3);
      for (let i = 0; i < deletes && list.length > 0; i++) list.splice(rng.int(list.length), 1);
      const inserts = rng.int(3);
      for (let i = 0; i < inserts; i++) list.splice(rng.int(list.length + 1), 0, keyedElement(rng, depth));
      const edits = rng.int(3);
      for (let i = 0; i < edits && list.length > 0; i++) {
        const at = rng.int(list.length);
        const el = { ...(list[at] as JsonObject) };
        const field = rng.pick(['title', 'done', 'n', 'tags', 'a/b']);
        if (field in el && rng.chance(0.3)) delete el[field];
        else el[field] = field in el && rng.chance(0.5) ? mutate(rng, el[field]!, depth - 1) : scalar(rng);
        list[at] = el;
      }
      if (rng.chance(0.05) && list.length > 1) list[1] = { ...(list[1] as JsonObject), id: (list[0] as JsonObject)['id']! }; // duplicate key
      if (rng.chance(0.05) && list.length > 0) list.push({ title: 'no id' });
      return list;
    }
    const edits = 1 + rng.int(4);
    for (let i = 0; i < edits; i++) {
      const r = rng.int(4);
      if (r === 0 || list.length === 0) list.splice(rng.int(list.length + 1), 0, value(rng, depth - 1));
      else if (r === 1) list.splice(rng.int(list.length), 1);
      else {
        const at = rng.int(list.length);
        list[at] = mutate(rng, list[at]!, depth - 1);
      }
    }
    return list;
  }
  const obj: JsonObject = { ...v };
  for (const k of Object.keys(obj)) {
    const r = rng.int(10);
    if (r === 0) delete obj[k];
    else if (r < 4) obj[k] = mutate(rng, obj[k]!, depth - 1);
  }
  const adds = rng.int(3);
  for (let i = 0; i < adds; i++) obj[rng.pick(KEYS)] = value(rng, depth - 1);
  return obj;
}

/** A random document and a changed version of it. */
export function pair(rng: Rng): [JsonValue, JsonValue] {
  const depth = 1 + rng.int(5);
  const a = rng.chance(0.9) ? (rng.chance(0.5) ? { root: value(rng, depth), list: value(rng, 2) } : value(rng, depth)) : scalar(rng);
  const r = rng.next();
  let b: JsonValue;
  if (r < 0.05) b = a;
  else if (r < 0.1) b = JSON.parse(JSON.stringify(a)) as JsonValue;
  else if (r < 0.15) b = value(rng, depth);
  else {
    b = mutate(rng, a, depth + 1);
    if (rng.chance(0.2)) b = JSON.parse(JSON.stringify(b)) as JsonValue; // nothing shared
  }
  return [a, b];
}
