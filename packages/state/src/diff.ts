import { StateError } from './errors.js';
import { assertJson, depthOption, clone, deepEqual, has, isPlainObject } from './json.js';
import type { JsonObject, JsonValue } from './json.js';
import type { Patch } from './operations.js';
import { escapeToken, parsePointer } from './pointer.js';

export interface DiffOptions {
  /**
   * The identity member of array elements, for arrays diffed by key (default
   * 'id'); null diffs no array by key unless `keys` names it. An array is
   * diffed by key only when every element of both the old and the new array
   * is an object whose key member is a string or a number, unique within its
   * array; otherwise it is diffed by position: the alignment with the fewest
   * adds, removes and replaces (edit distance, a longest-common-subsequence
   * diff that counts a changed element as one replace, not a remove and an add).
   */
  key?: string | null;
  /**
   * Identity member per array path, overriding `key`: JSON Pointers to arrays,
   * where a `*` segment matches any one segment, e.g.
   * `{ '/todos': 'uid', '/boards/*\/cards': 'cardId', '/log': null }`.
   * When several match, the one with fewer `*` wins, then the first listed.
   */
  keys?: Record<string, string | null>;
  /**
   * Largest alignment table (old length × new length of the differing middle
   * of an array, after equal heads and tails are set aside) before aligning
   * by index instead:
   * element i against element i, then adds or removes at the tail. Default 1e6.
   */
  maxLcsCells?: number;
  /** Nesting depth accepted in either value (default and most 1000). */
  maxDepth?: number;
}

interface KeyPattern {
  tokens: (string | null)[]; // null is the * wildcard
  key: string | null;
  wildcards: number;
}

type KeyValue = string | number;

/**
 * An RFC 6902 patch that turns `oldValue` into `newValue` (deep-equal) when
 * applied in order by any conforming implementation. Equal values give `[]`.
 * Both values are checked first: anything JSON cannot hold (undefined,
 * functions, NaN, Date, cycles...) throws StateError ERR_NOT_JSON naming
 * its path. Values in the patch are copies, not references into `newValue`.
 */
export function diff(oldValue: unknown, newValue: unknown, options: DiffOptions = {}): Patch {
  const maxDepth = depthOption(options.maxDepth);
  assertJson(oldValue, { maxDepth, name: 'oldValue' });
  assertJson(newValue, { maxDepth, name: 'newValue' });
  return diffTrusted(oldValue, newValue, options);
}

/**
 * `diff` of two values known to be JSON (assertJson), not checked again: for values made so
 * (a draft's result, `applyPatch`'s, a checked copy), where a change to a large document should
 * cost about the change, and the parts both values share are passed at once.
 */
export function diffTrusted(oldValue: JsonValue, newValue: JsonValue, options: DiffOptions = {}): Patch {
  const differ = new Differ(options);
  differ.value(oldValue, newValue, '');
  return differ.ops;
}

function badOption(message: string): never {
  throw new StateError('ERR_INVALID_OPTION', message, '');
}

class Differ {
  readonly ops: Patch = [];
  private readonly defaultKey: string | null;
  private readonly patterns: KeyPattern[] = [];
  private readonly maxLcsCells: number;

  constructor(options: DiffOptions) {
    const key = options.key === undefined ? 'id' : options.key;
    if (key !== null && typeof key !== 'string') badOption(`diff: option key must be a string or null`);
    this.defaultKey = key;
    this.maxLcsCells = options.maxLcsCells ?? 1_000_000;
    if (typeof this.maxLcsCells !== 'number' || !(this.maxLcsCells >= 0)) badOption('diff: option maxLcsCells must be a number >= 0');
    if (options.keys !== undefined) {
      if (!isPlainObject(options.keys)) badOption('diff: option keys must be an object of path: key');
      for (const [pattern, k] of Object.entries(options.keys)) {
        if (k !== null && typeof k !== 'string') badOption(`diff: option keys[${JSON.stringify(pattern)}] must be a string or null`);
        let tokens: string[];
        try {
          tokens = parsePointer(pattern);
        } catch {
          badOption(`diff: option keys has ${JSON.stringify(pattern)}, which is not a JSON Pointer`);
        }
        const pt = tokens.map((t) => (t === '*' ? null : t));
        this.patterns.push({ tokens: pt, key: k, wildcards: pt.filter((t) => t === null).length });
      }
      this.patterns.sort((x, y) => x.wildcards - y.wildcards);
    }
  }

  value(a: JsonValue, b: JsonValue, path: string): void {
    if (a === b) return;
    if (typeof a === 'object' && typeof b === 'object' && a !== null && b !== null) {
      const aArr = Array.isArray(a);
      if (aArr === Array.isArray(b)) {
        if (aArr) this.array(a as JsonValue[], b as JsonValue[], path);
        else this.object(a as JsonObject, b as JsonObject, path);
        return;
      }
    }
    this.ops.push({ op: 'replace', path, value: clone(b) });
  }

  private object(a: JsonObject, b: JsonObject, path: string): void {
    for (const k of Object.keys(a)) {
      if (!has(b, k)) {
        this.ops.push({ op: 'remove', path: path + '/' + escapeToken(k) });
        continue;
      }
      const av = a[k]!;
      const bv = b[k]!;
      if (av !== bv) this.value(av, bv, path + '/' + escapeToken(k));
    }
    for (const k of Object.keys(b)) {
      if (!has(a, k)) this.ops.push({ op: 'add', path: path + '/' + escapeToken(k), value: clone(b[k]!) });
    }
  }

  private keyFor(path: string): string | null {
    if (this.patterns.length > 0) {
      const tokens = parsePointer(path);
      for (const p of this.patterns) {
        if (p.tokens.length !== tokens.length) continue;
        let ok = true;
        for (let i = 0; i < tokens.length; i++) {
          const t = p.tokens[i];
          if (t !== null && t !== tokens[i]) {
            ok = false;
            break;
          }
        }
        if (ok) return p.key;
      }
    }
    return this.defaultKey;
  }

  private array(a: JsonValue[], b: JsonValue[], path: string): void {
    const key = this.keyFor(path);
    if (key !== null && this.keyed(a, b, path, key)) return;
    this.positional(a, b, path);
  }

  // ---- arrays diffed by key -------------------------------------------------

  private keyed(a: JsonValue[], b: JsonValue[], path: string, key: string): boolean {
    // Elements with the same key at the same place at the head and the tail
    // (usually all of them) need no matching: set them aside first.
    const n = a.length;
    const m = b.length;
    let lo = 0;
    while (lo < n && lo < m) {
      const k = keyOf(a[lo]!, key);
      if (k === undefined || k !== keyOf(b[lo]!, key)) break;
      lo++;
    }
    let hiA = n;
    let hiB = m;
    while (hiA > lo && hiB > lo) {
      const k = keyOf(a[hiA - 1]!, key);
      if (k === undefined || k !== keyOf(b[hiB - 1]!, key)) break;
      hiA--;
      hiB--;
    }
    if (lo === hiA && lo === hiB) {
      // Same keys in the same order: only changes inside elements.
      for (let i = 0; i < m; i++) if (a[i] !== b[i]) this.value(a[i]!, b[i]!, `${path}/${i}`);
      return true;
    }
    // Elements to match up: every key must be there and unique in its array.
    const aIndex = keyIndex(a, key, 0, n);
    if (aIndex === null) return false;
    // bToA: for each element of b, the index of the same key in a, or -1 if new.
    const bToA = new Int32Array(m);
    const matched = new Uint8Array(n);
    let fresh: Set<KeyValue> | null = null;
    for (let i = 0; i < m; i++) {
      const k = keyOf(b[i]!, key);
      if (k === undefined) return false;
      const from = aIndex.get(k);
      if (from === undefined) {
        fresh ??= new Set();
        if (fresh.has(k)) return false;
        fresh.add(k);
        bToA[i] = -1;
      } else {
        if (matched[from]) return false;
        matched[from] = 1;
        bToA[i] = from;
      }
    }
    const ops = this.ops;

    // 1. Removes, from the end so earlier indexes stay put.
    for (let i = hiA - 1; i >= lo; i--) {
      if (!matched[i]) ops.push({ op: 'remove', path: `${path}/${i}` });
    }
    // After the removes: each kept middle element's index, counted from lo.
    const kept = new Int32Array(hiA - lo);
    let size = 0;
    for (let i = lo; i < hiA; i++) if (matched[i]) kept[i - lo] = size++;
    // seq: for the kept elements in new order, that index.
    const seq = new Int32Array(size);
    let count = 0;
    let sorted = true;
    for (let i = lo; i < hiB; i++) {
      const from = bToA[i]!;
      if (from < 0) continue;
      const p = kept[from - lo]!;
      if (count > 0 && p < seq[count - 1]!) sorted = false;
      seq[count++] = p;
    }

    // 2. Moves: the elements on a longest increasing run of old positions stay,
    // each other one moves once, to just after its new predecessor.
    if (!sorted) this.moves(size, seq, path, lo);

    // 3. Adds, in new order, each at its final index.
    for (let i = lo; i < hiB; i++) {
      if (bToA[i]! < 0) ops.push({ op: 'add', path: `${path}/${i}`, value: clone(b[i]!) });
    }
    // 4. Changes inside kept elements, at their final index.
    for (let i = 0; i < m; i++) {
      const from = bToA[i]!;
      if (from < 0) continue;
      const av = a[from]!;
      const bv = b[i]!;
      if (av !== bv) this.value(av, bv, `${path}/${i}`);
    }
    return true;
  }

  /**
   * Move ops that reorder the `size` kept elements (from index `base` on) into
   * their new order, one per element off the longest increasing subsequence of
   * `seq` (for each new index, the element's old index). Each element that
   * moves goes to just after its new predecessor. Current indexes come from a
   * Fenwick tree over every place an element can be, so a full shuffle costs
   * O(n log n), not O(n²).
   */
  private moves(size: number, seq: Int32Array, path: string, base: number): void {
    const n = seq.length;
    const stable = lisMask(seq);
    const oldToNew = new Int32Array(size);
    for (let i = 0; i < n; i++) oldToNew[seq[i]!] = i;
    // Places, in list order. Between two consecutive stable elements (in new
    // order, which is also their old order) come first the moved elements whose
    // new index lies between theirs, once they have moved (in new order), then
    // the elements still waiting to move whose old index lies between theirs
    // (in old order), then the second stable element.
    const settled = new Int32Array(n); // place of new index i once in position
    const waiting = new Int32Array(n); // place of new index i before it moves
    let place = 0;
    let prevNew = -1;
    let prevOld = -1;
    for (let s = 0; s <= n; s++) {
      if (s < n && !stable[s]) continue;
      for (let i = prevNew + 1; i < s; i++) settled[i] = place++;
      const oldEnd = s < n ? seq[s]! : size;
      for (let p = prevOld + 1; p < oldEnd; p++) waiting[oldToNew[p]!] = place++;
      if (s < n) {
        settled[s] = place++;
        prevNew = s;
        prevOld = seq[s]!;
      }
    }
    const tree = new Fenwick(place);
    for (let i = 0; i < n; i++) tree.add(stable[i] ? settled[i]! : waiting[i]!, 1);
    for (let i = 0; i < n; i++) {
      if (stable[i]) continue;
      const from = tree.before(waiting[i]!);
      tree.add(waiting[i]!, -1);
      const to = tree.before(settled[i]!);
      tree.add(settled[i]!, 1);
      if (from !== to) this.ops.push({ op: 'move', from: `${path}/${base + from}`, path: `${path}/${base + to}` });
    }
  }

  // ---- arrays diffed by position -------------------------------------------

  private positional(a: JsonValue[], b: JsonValue[], path: string): void {
    const n = a.length;
    const m = b.length;
    let start = 0;
    while (start < n && start < m && deepEqual(a[start], b[start])) start++;
    let endA = n;
    let endB = m;
    while (endA > start && endB > start && deepEqual(a[endA - 1], b[endB - 1])) {
      endA--;
      endB--;
    }
    const la = endA - start;
    const lb = endB - start;
    if (la === 0 && lb === 0) return;
    if (la === 0 || lb === 0 || (la + 1) * (lb + 1) > this.maxLcsCells) {
      this.hunk(a, start, la, b, start, lb, start, path);
      return;
    }
    // Edit distance table over the middle: D[i][j] = fewest adds, removes and
    // replaces taking a[start+i..endA) to b[start+j..endB). Like a longest
    // common subsequence, but a changed element counts as one replace (diffed
    // in place) rather than a remove and an add.
    const ha = new Int32Array(la);
    const hb = new Int32Array(lb);
    for (let i = 0; i < la; i++) ha[i] = hash(a[start + i]!, 0);
    for (let j = 0; j < lb; j++) hb[j] = hash(b[start + j]!, 0);
    const eq = (i: number, j: number): boolean => ha[i] === hb[j] && deepEqual(a[start + i], b[start + j]);
    const w = lb + 1;
    const D = la + lb < 65535 ? new Uint16Array((la + 1) * w) : new Uint32Array((la + 1) * w);
    for (let j = 0; j <= lb; j++) D[la * w + j] = lb - j;
    for (let i = la - 1; i >= 0; i--) {
      const row = i * w;
      const below = row + w;
      D[row + lb] = la - i;
      for (let j = lb - 1; j >= 0; j--) {
        D[row + j] = eq(i, j) ? D[below + j + 1]! : 1 + Math.min(D[below + j + 1]!, D[below + j]!, D[row + j + 1]!);
      }
    }
    // Walk it forwards, emitting each op at the index the array has reached. On
    // a tie, keep equal elements where they are and prefer a remove or an add to
    // a replace, so an element that merely shifted is not rewritten in place.
    let i = 0;
    let j = 0;
    let at = start;
    while (i < la || j < lb) {
      const here = D[i * w + j]!;
      if (i < la && j < lb && eq(i, j)) {
        i++;
        j++;
        at++;
      } else if (i < la && D[(i + 1) * w + j]! + 1 === here) {
        this.ops.push({ op: 'remove', path: `${path}/${at}` });
        i++;
      } else if (j < lb && D[i * w + j + 1]! + 1 === here) {
        this.ops.push({ op: 'add', path: `${path}/${at}`, value: clone(b[start + j]!) });
        j++;
        at++;
      } else {
        this.value(a[start + i]!, b[start + j]!, `${path}/${at}`);
        i++;
        j++;
        at++;
      }
    }
  }

  /**
   * Replace `del` elements of a at aFrom, sitting at index `at` of the array as
   * patched so far, by `ins` elements of b at bFrom: pairs diffed in place,
   * then the surplus removed (from the end) or added. Returns the index after.
   */
  private hunk(a: JsonValue[], aFrom: number, del: number, b: JsonValue[], bFrom: number, ins: number, at: number, path: string): number {
    const pairs = Math.min(del, ins);
    for (let t = 0; t < pairs; t++) this.value(a[aFrom + t]!, b[bFrom + t]!, `${path}/${at + t}`);
    for (let t = del - 1; t >= pairs; t--) this.ops.push({ op: 'remove', path: `${path}/${at + t}` });
    for (let t = pairs; t < ins; t++) this.ops.push({ op: 'add', path: `${path}/${at + t}`, value: clone(b[bFrom + t]!) });
    return at + ins;
  }
}

function keyOf(el: JsonValue, key: string): KeyValue | undefined {
  if (typeof el !== 'object' || el === null || Array.isArray(el) || !has(el, key)) return undefined;
  const k = el[key];
  return typeof k === 'string' || typeof k === 'number' ? k : undefined;
}

/**
 * key value -> index for list[from..to), or null unless every one of them is
 * an object with a string or number key, unique among them.
 */
function keyIndex(list: JsonValue[], key: string, from: number, to: number): Map<KeyValue, number> | null {
  const index = new Map<KeyValue, number>();
  for (let i = from; i < to; i++) {
    const k = keyOf(list[i]!, key);
    if (k === undefined || index.has(k)) return null;
    index.set(k, i);
  }
  return index;
}

/** Marks the members of one longest strictly increasing subsequence of seq. */
function lisMask(seq: Int32Array): Uint8Array {
  const n = seq.length;
  const tails = new Int32Array(n); // index into seq of the smallest tail of a run of length r+1
  const prev = new Int32Array(n);
  let len = 0;
  for (let i = 0; i < n; i++) {
    const v = seq[i]!;
    let lo = 0;
    let hi = len;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (seq[tails[mid]!]! < v) lo = mid + 1;
      else hi = mid;
    }
    prev[i] = lo > 0 ? tails[lo - 1]! : -1;
    tails[lo] = i;
    if (lo === len) len++;
  }
  const mask = new Uint8Array(n);
  for (let i = len > 0 ? tails[len - 1]! : -1; i >= 0; i = prev[i]!) mask[i] = 1;
  return mask;
}

class Fenwick {
  private readonly t: Int32Array;
  constructor(size: number) {
    this.t = new Int32Array(size + 1);
  }
  add(i: number, d: number): void {
    for (i++; i < this.t.length; i += i & -i) this.t[i]! += d;
  }
  /** Sum over places strictly before i. */
  before(i: number): number {
    let s = 0;
    for (; i > 0; i -= i & -i) s += this.t[i]!;
    return s;
  }
}

/** Structural hash consistent with deepEqual (object key order ignored). */
function hash(v: JsonValue, depth: number): number {
  switch (typeof v) {
    case 'string':
      return strHash(v, 0x811c9dc5);
    case 'number':
      return strHash(String(v === 0 ? 0 : v), 0x1b873593);
    case 'boolean':
      return v ? 0x2f7b1e3d : 0x5a1c9b27;
    default:
      break;
  }
  if (v === null) return 0x3c6ef372;
  if (depth > 64) return 0x7f4a7c15; // equal values must hash equal; deep ones just collide
  if (Array.isArray(v)) {
    let h = 0x6a09e667 ^ v.length;
    for (const el of v) h = Math.imul(h ^ hash(el, depth + 1), 0x01000193);
    return h;
  }
  let h = 0x510e527f;
  for (const k of Object.keys(v)) h = (h + Math.imul(strHash(k, 0x9b05688c), hash(v[k]!, depth + 1) | 1)) | 0;
  return h;
}

function strHash(s: string, h: number): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}
