import { StateError } from './errors.js';
import { clone, depthOption, deepEqual, has, isPlainObject, jsonDepth, setOwn } from './json.js';
import type { JsonObject, JsonValue } from './json.js';
import type { Operation } from './operations.js';
import { formatPointer, parsePointer } from './pointer.js';

export interface ApplyOptions {
  /** Nesting depth the result may reach (default and most 1000). */
  maxDepth?: number;
  /**
   * Values (containers included) the patch's `copy` operations may duplicate in all (default
   * 100 000): a copy of the root into itself doubles the document, and 30 of them would make it a
   * billion values.
   */
  maxCopy?: number;
}

/** The default of ApplyOptions.maxCopy. */
export const MAX_COPY = 100_000;

type Container = JsonObject | JsonValue[];

interface ParsedOp {
  op: Operation['op'];
  path: string;
  tokens: string[];
  from: string[] | null;
  fromText: string;
  value: JsonValue;
  valueDepth: number;
}

const OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);
const INDEX = /^(?:0|[1-9][0-9]*)$/;

/**
 * Applies an RFC 6902 patch to `value` and returns the result; `value` itself
 * is never modified, and untouched subtrees of the result are the input's own
 * (shared, not copied), so treat both as immutable. Values taken from the
 * patch are copied.
 *
 * The whole patch is checked first (StateError ERR_INVALID_PATCH: not an
 * array, an op that is not an object, an unknown op, a missing or malformed
 * path/from, a missing or non-JSON value). Then ops apply in order; one that
 * cannot (a path that must exist and does not, an array index out of range or
 * malformed, a failed test, a move into its own child, removing the root)
 * throws StateError ERR_PATCH_FAILED. Either error has `index` (the op) and
 * `path`, and then nothing has changed: the patch applies whole or not at all.
 *
 * `value` must be JSON (see assertJson); it is not re-checked here, so that
 * applying a small patch to a large document costs about the patch's size.
 */
export function applyPatch(value: JsonValue, patch: readonly Operation[], options: ApplyOptions = {}): JsonValue {
  const maxDepth = depthOption(options.maxDepth);
  const maxCopy = options.maxCopy ?? MAX_COPY;
  if (typeof maxCopy !== 'number' || !Number.isInteger(maxCopy) || maxCopy < 0) throw new StateError('ERR_INVALID_OPTION', `maxCopy must be a whole number ≥ 0, not ${String(maxCopy)}`, '');
  const ops = parsePatch(patch as readonly unknown[]);
  const state = new Patcher(value, maxDepth, maxCopy);
  for (let i = 0; i < ops.length; i++) state.apply(ops[i]!, i);
  return state.root;
}

function invalid(index: number, path: string, message: string): never {
  throw new StateError('ERR_INVALID_PATCH', `Patch op ${index}: ${message}`, path, index);
}

function parsePatch(patch: readonly unknown[]): ParsedOp[] {
  if (!Array.isArray(patch)) {
    throw new StateError('ERR_INVALID_PATCH', `A patch must be an array of operations, not ${patch === null ? 'null' : typeof patch}`, '');
  }
  const out: ParsedOp[] = [];
  for (let i = 0; i < patch.length; i++) {
    const raw: unknown = patch[i];
    if (!isPlainObject(raw)) invalid(i, '', `must be an object, not ${raw === null ? 'null' : Array.isArray(raw) ? 'an array' : typeof raw}`);
    const op = raw['op'];
    if (typeof op !== 'string' || !OPS.has(op)) {
      invalid(i, '', `"op" must be one of add, remove, replace, move, copy, test, not ${JSON.stringify(op) ?? 'missing'}`);
    }
    const path = raw['path'];
    if (typeof path !== 'string') invalid(i, '', `${op} needs a "path" string`);
    const tokens = pointer(i, path, 'path', path);
    let from: string[] | null = null;
    let fromText = '';
    if (op === 'move' || op === 'copy') {
      const f = raw['from'];
      if (typeof f !== 'string') invalid(i, path, `${op} needs a "from" string`);
      from = pointer(i, path, 'from', f);
      fromText = f;
    }
    let value: JsonValue = null;
    let valueDepth = 0;
    if (op === 'add' || op === 'replace' || op === 'test') {
      if (!has(raw, 'value')) invalid(i, path, `${op} needs a "value"`);
      try {
        valueDepth = jsonDepth(raw['value'], { name: 'value' });
        value = op === 'test' ? (raw['value'] as JsonValue) : clone(raw['value'] as JsonValue);
      } catch (err) {
        if (err instanceof StateError) invalid(i, path, `${op} ${path}: ${err.message}`);
        throw err;
      }
    }
    out.push({ op: op as Operation['op'], path, tokens, from, fromText, value, valueDepth });
  }
  return out;
}

function pointer(i: number, path: string, member: string, text: string): string[] {
  try {
    return parsePointer(text);
  } catch (err) {
    if (err instanceof StateError) invalid(i, path, `"${member}": ${err.message}`);
    throw err;
  }
}

function isContainer(v: JsonValue | undefined): v is Container {
  return typeof v === 'object' && v !== null;
}

/**
 * The height (0 for a scalar) and the size (values, containers included, as JSON would spell them
 * out) of a value of the document. Copies share their containers, so the document is a graph in
 * which a subtree may be reached many times: each container is measured once (a walk of every
 * path took time doubling with each copy of the root into itself).
 */
function measure(value: JsonValue): { height: number; size: number } {
  const known = new Map<Container, { height: number; size: number }>();
  const of = (v: JsonValue): { height: number; size: number } => {
    if (!isContainer(v)) return SCALAR;
    const seen = known.get(v);
    if (seen) return seen;
    let height = 0;
    let size = 1;
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      const m = of(child);
      if (m.height > height) height = m.height;
      size += m.size;
    }
    const result = { height: height + 1, size };
    known.set(v, result);
    return result;
  };
  return of(value);
}

const SCALAR = { height: 0, size: 1 };

function kind(v: JsonValue): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

class Patcher {
  /** Containers made by this patcher and referenced once: safe to change in place. */
  private owned = new Set<Container>();
  private index = 0;
  private op!: ParsedOp;
  /** Values duplicated by this patch's copies so far (see ApplyOptions.maxCopy). */
  private copied = 0;

  constructor(
    public root: JsonValue,
    private readonly maxDepth: number,
    private readonly maxCopy: number,
  ) {}

  private fail(message: string): never {
    const op = this.op;
    const where = op.op === 'move' || op.op === 'copy' ? `${op.op} ${op.fromText} to ${op.path}` : `${op.op} ${op.path}`;
    throw new StateError('ERR_PATCH_FAILED', `Patch op ${this.index} (${where}): ${message}`, op.path, this.index);
  }

  apply(op: ParsedOp, index: number): void {
    this.op = op;
    this.index = index;
    switch (op.op) {
      case 'add':
        this.add(op.tokens, op.value, op.valueDepth);
        return;
      case 'remove':
        this.remove(op.tokens);
        return;
      case 'replace':
        this.get(op.tokens, 'path');
        this.checkDepth(op.tokens, op.valueDepth);
        if (op.tokens.length === 0) this.root = op.value;
        else this.set(op.tokens, op.value, false);
        return;
      case 'move': {
        const from = op.from!;
        const to = op.tokens;
        const v = this.get(from, 'from');
        if (from.length === to.length && from.every((t, i) => t === to[i])) return;
        if (from.length < to.length && from.every((t, i) => t === to[i])) {
          this.fail(`cannot move a value into its own child`);
        }
        this.remove(from);
        this.add(to, v, measure(v).height);
        return;
      }
      case 'copy': {
        const v = this.get(op.from!, 'from');
        const { height, size } = measure(v);
        this.copied += size;
        if (this.copied > this.maxCopy) this.fail(`the patch's copies would duplicate more than ${this.maxCopy} values`);
        // The value now sits in two places: nothing may be changed in place any more.
        this.owned = new Set();
        this.add(op.tokens, v, height);
        return;
      }
      case 'test': {
        const v = this.get(op.tokens, 'path');
        if (!deepEqual(v, op.value)) this.fail(`test failed: the value is not equal to ${preview(op.value)}`);
        return;
      }
    }
  }

  private checkDepth(tokens: string[], valueDepth: number): void {
    if (tokens.length + valueDepth > this.maxDepth) {
      this.fail(`the result would nest deeper than the limit of ${this.maxDepth} levels`);
    }
  }

  /** The value at tokens; it must exist. */
  private get(tokens: string[], member: 'path' | 'from'): JsonValue {
    let node = this.root;
    for (let i = 0; i < tokens.length; i++) node = this.child(node, tokens, i, member);
    return node;
  }

  /** The child of node at tokens[i], which must exist. */
  private child(node: JsonValue, tokens: string[], i: number, member: 'path' | 'from'): JsonValue {
    const t = tokens[i]!;
    const here = formatPointer(tokens.slice(0, i + 1));
    if (Array.isArray(node)) {
      if (!INDEX.test(t)) this.fail(`${member} ${here} does not exist (${JSON.stringify(t)} is not an array index)`);
      const n = Number(t);
      if (n >= node.length) this.fail(`${member} ${here} does not exist (the array has ${node.length} elements)`);
      return node[n]!;
    }
    if (isContainer(node)) {
      if (!has(node, t)) this.fail(`${member} ${here} does not exist`);
      return node[t]!;
    }
    const parent = formatPointer(tokens.slice(0, i));
    this.fail(`${member} ${here} does not exist (${parent === '' ? 'the root' : parent} is ${kind(node)})`);
  }

  /** The container holding tokens' last token, made safe to change in place. */
  private parent(tokens: string[]): Container {
    if (!isContainer(this.root)) this.fail(`path ${formatPointer(tokens.slice(0, 1))} does not exist (the root is ${kind(this.root)})`);
    this.root = this.own(this.root);
    let node: Container = this.root;
    for (let i = 0; i < tokens.length - 1; i++) {
      const c = this.child(node, tokens, i, 'path');
      if (!isContainer(c)) this.fail(`path ${formatPointer(tokens.slice(0, i + 2))} does not exist (${formatPointer(tokens.slice(0, i + 1))} is ${kind(c)})`);
      const mine = this.own(c);
      if (mine !== c) {
        if (Array.isArray(node)) node[Number(tokens[i])] = mine;
        else setOwn(node, tokens[i]!, mine);
      }
      node = mine;
    }
    return node;
  }

  private own(c: Container): Container {
    if (this.owned.has(c)) return c;
    const copy: Container = Array.isArray(c) ? c.slice() : { ...c };
    this.owned.add(copy);
    return copy;
  }

  private arrayIndex(list: JsonValue[], t: string, allowEnd: boolean): number {
    const here = this.op.path;
    if (t === '-' && allowEnd) return list.length;
    if (!INDEX.test(t)) this.fail(`${JSON.stringify(t)} is not an array index${allowEnd ? ' or "-"' : ''}`);
    const n = Number(t);
    if (allowEnd ? n > list.length : n >= list.length) {
      this.fail(`index ${n} is out of range for ${here === '' ? 'the root' : 'an array'} of ${list.length} elements`);
    }
    return n;
  }

  private add(tokens: string[], value: JsonValue, valueDepth: number): void {
    this.checkDepth(tokens, valueDepth);
    if (tokens.length === 0) {
      this.root = value;
      return;
    }
    this.set(tokens, value, true);
  }

  /** add (insert) or replace at tokens; for replace the target was checked to exist. */
  private set(tokens: string[], value: JsonValue, insert: boolean): void {
    const parent = this.parent(tokens);
    const last = tokens[tokens.length - 1]!;
    if (Array.isArray(parent)) {
      const i = this.arrayIndex(parent, last, insert);
      if (insert) parent.splice(i, 0, value);
      else parent[i] = value;
    } else {
      setOwn(parent, last, value);
    }
  }

  private remove(tokens: string[]): void {
    if (tokens.length === 0) this.fail('cannot remove the root');
    this.get(tokens, this.op.op === 'move' ? 'from' : 'path');
    const parent = this.parent(tokens);
    const last = tokens[tokens.length - 1]!;
    if (Array.isArray(parent)) parent.splice(Number(last), 1);
    else delete parent[last];
  }
}

function preview(v: JsonValue): string {
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
