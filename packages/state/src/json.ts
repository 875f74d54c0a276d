import { StateError } from './errors.js';
import { formatPointer } from './pointer.js';

/** A value JSON can hold. Objects are plain (prototype Object.prototype or null). */
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/**
 * How deep values may nest: a container at the root is depth 1, a container
 * inside it depth 2, and so on. Deeper values are refused with StateError
 * ERR_TOO_DEEP, so no function here overflows the stack. Options may lower
 * the limit (maxDepth), not raise it.
 */
export const DEFAULT_MAX_DEPTH = 1000;

/** The maxDepth option, checked: an integer from 1 to DEFAULT_MAX_DEPTH. */
export function depthOption(maxDepth: unknown): number {
  if (maxDepth === undefined) return DEFAULT_MAX_DEPTH;
  if (typeof maxDepth !== 'number' || !Number.isInteger(maxDepth) || maxDepth < 1 || maxDepth > DEFAULT_MAX_DEPTH) {
    throw new StateError('ERR_INVALID_OPTION', `maxDepth must be an integer from 1 to ${DEFAULT_MAX_DEPTH}, not ${String(maxDepth)}`, '');
  }
  return maxDepth;
}

export interface JsonCheckOptions {
  /** Largest nesting depth accepted (default and most 1000). */
  maxDepth?: number;
  /** Names the value in error messages, e.g. 'newValue' (default 'value'). */
  name?: string;
}

const hasOwn = Object.prototype.hasOwnProperty;

/** Own property check that never consults the prototype chain. */
export function has(obj: object, key: string): boolean {
  return hasOwn.call(obj, key);
}

/** Set obj[key] as an own data property, even for the key "__proto__". */
export function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

/** A plain object: prototype Object.prototype, null, or another realm's root prototype. */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === null || proto === Object.prototype || Object.getPrototypeOf(proto) === null;
}

function describe(value: unknown): string | null {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return null;
    case 'number':
      return Number.isFinite(value) ? null : String(value);
    case 'undefined':
      return 'undefined';
    case 'function':
      return 'a function';
    case 'symbol':
      return 'a symbol';
    case 'bigint':
      return `a bigint (${String(value)}n)`;
    case 'object': {
      if (value === null || Array.isArray(value) || isPlainObject(value)) return null;
      const ctor = (value as { constructor?: { name?: unknown } }).constructor;
      const name = typeof ctor === 'function' && typeof ctor.name === 'string' && ctor.name ? ctor.name : 'non-plain object';
      return `a ${name} (only plain objects and arrays are JSON)`;
    }
    default:
      return `a ${typeof value}`;
  }
}

/**
 * Walks a value to check or copy it, keeping the path it is at for error messages. Exported for
 * draft.ts (not from the package): a draft's finisher is a walker that `adopt`s its drafts.
 */
export class Walker {
  readonly stack: unknown[] = [];
  readonly tokens: (string | number)[] = [];
  constructor(
    readonly maxDepth: number,
    readonly name: string,
  ) {}

  /** What `copy` makes of an object found at `depth` instead of copying it; undefined: copy it. */
  adopt(_value: object, _depth: number): JsonValue | undefined {
    return undefined;
  }

  where(depth: number): string {
    const p = formatPointer(this.tokens.slice(0, depth));
    return p === '' ? `${this.name} (the root)` : `${this.name} at ${p}`;
  }

  notJson(depth: number, what: string): never {
    throw new StateError('ERR_NOT_JSON', `${this.where(depth)} is ${what}, which JSON cannot hold`, formatPointer(this.tokens.slice(0, depth)));
  }

  /** Called when a container sits at depth > maxDepth: a cycle, or just too deep. */
  tooDeep(depth: number): never {
    const seen = new Map<unknown, number>();
    for (let i = 0; i < depth; i++) {
      const c = this.stack[i];
      const first = seen.get(c);
      if (first !== undefined) {
        const path = formatPointer(this.tokens.slice(0, i));
        const back = formatPointer(this.tokens.slice(0, first));
        throw new StateError(
          'ERR_NOT_JSON',
          `${this.where(i)} is a cycle (the same object as at ${back === '' ? 'the root' : back}), which JSON cannot hold`,
          path,
        );
      }
      seen.set(c, i);
    }
    throw new StateError(
      'ERR_TOO_DEEP',
      `${this.where(depth)} nests deeper than the limit of ${this.maxDepth} levels`,
      formatPointer(this.tokens.slice(0, depth)),
    );
  }

  /** Validate; returns the nesting depth of the value (0 for a scalar). */
  check(value: unknown, depth: number): number {
    if (typeof value !== 'object' || value === null) {
      const bad = describe(value);
      if (bad !== null) this.notJson(depth, bad);
      return 0;
    }
    if (depth >= this.maxDepth) {
      this.stack[depth] = value;
      this.tooDeep(depth + 1);
    }
    this.stack[depth] = value;
    let height = 0;
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        this.tokens[depth] = i;
        const h = this.check(value[i], depth + 1);
        if (h > height) height = h;
      }
      return height + 1;
    }
    if (!isPlainObject(value)) this.notJson(depth, describe(value)!);
    if (Object.getOwnPropertySymbols(value).length > 0) this.notJson(depth, 'an object with symbol keys');
    for (const key of Object.keys(value)) {
      this.tokens[depth] = key;
      const h = this.check(value[key], depth + 1);
      if (h > height) height = h;
    }
    return height + 1;
  }

  copy(value: unknown, depth: number): JsonValue {
    if (typeof value !== 'object' || value === null) {
      const bad = describe(value);
      if (bad !== null) this.notJson(depth, bad);
      return value as JsonValue;
    }
    const adopted = this.adopt(value, depth);
    if (adopted !== undefined) return adopted;
    if (depth >= this.maxDepth) {
      this.stack[depth] = value;
      this.tooDeep(depth + 1);
    }
    this.stack[depth] = value;
    if (Array.isArray(value)) {
      const out: JsonValue[] = new Array<JsonValue>(value.length);
      for (let i = 0; i < value.length; i++) {
        this.tokens[depth] = i;
        out[i] = this.copy(value[i], depth + 1);
      }
      return out;
    }
    if (!isPlainObject(value)) this.notJson(depth, describe(value)!);
    if (Object.getOwnPropertySymbols(value).length > 0) this.notJson(depth, 'an object with symbol keys');
    const out: JsonObject = {};
    for (const key of Object.keys(value)) {
      this.tokens[depth] = key;
      setOwn(out, key, this.copy(value[key], depth + 1));
    }
    return out;
  }
}

/**
 * Throws StateError unless `value` is a JSON value: null, a boolean, a string, a
 * finite number, an array (no holes, no undefined) or a plain object of them,
 * acyclic and at most `maxDepth` deep. The error's `path` is where the bad
 * value sits. Refused: undefined, functions, symbols, bigints, NaN, Infinity,
 * Date, Map, Set, class instances, symbol-keyed properties, cycles.
 */
export function assertJson(value: unknown, options: JsonCheckOptions = {}): asserts value is JsonValue {
  new Walker(depthOption(options.maxDepth), options.name ?? 'value').check(value, 0);
}

/** assertJson, returning the value's nesting depth (0 for a scalar). */
export function jsonDepth(value: unknown, options: JsonCheckOptions = {}): number {
  return new Walker(depthOption(options.maxDepth), options.name ?? 'value').check(value, 0);
}

/** True if assertJson would accept `value`. */
export function isJsonValue(value: unknown, options: JsonCheckOptions = {}): value is JsonValue {
  try {
    assertJson(value, options);
    return true;
  } catch (err) {
    if (err instanceof StateError) return false;
    throw err;
  }
}

/**
 * A deep copy of a JSON value, refusing (as assertJson does) anything JSON
 * cannot hold. Shared subtrees are copied once per occurrence.
 */
export function clone<T extends JsonValue>(value: T, options?: JsonCheckOptions): T;
export function clone(value: unknown, options?: JsonCheckOptions): JsonValue;
export function clone(value: unknown, options: JsonCheckOptions = {}): JsonValue {
  return new Walker(depthOption(options.maxDepth), options.name ?? 'value').copy(value, 0);
}

/**
 * `clone(next)`, but for the containers of `current` (a JSON value, not checked again) that
 * `next` holds at the same place: those are kept as they are, not walked. A new value made the
 * immutable way (`{ ...v, items: v.items.map((x, i) => i === 3 ? { ...x, done: true } : x) }`)
 * costs about what changed, and shares the rest with `current`; treat both as immutable.
 */
export function cloneChanges(next: unknown, current: JsonValue, options: JsonCheckOptions = {}): JsonValue {
  return new ChangeCopier(depthOption(options.maxDepth), options.name ?? 'value').beside(next, current, 0);
}

class ChangeCopier extends Walker {
  beside(value: unknown, current: JsonValue | undefined, depth: number): JsonValue {
    // The current value's own container at its own place: JSON already, at the same depth.
    if (value === current && typeof value === 'object' && value !== null) return value as JsonValue;
    if (typeof value !== 'object' || value === null || typeof current !== 'object' || current === null || Array.isArray(value) !== Array.isArray(current)) {
      return this.copy(value, depth);
    }
    if (depth >= this.maxDepth) {
      this.stack[depth] = value;
      this.tooDeep(depth + 1);
    }
    this.stack[depth] = value;
    if (Array.isArray(value)) {
      const old = current as JsonValue[];
      const out: JsonValue[] = new Array<JsonValue>(value.length);
      for (let i = 0; i < value.length; i++) {
        this.tokens[depth] = i;
        out[i] = this.beside(value[i], old[i], depth + 1);
      }
      return out;
    }
    if (!isPlainObject(value)) this.notJson(depth, describe(value)!);
    if (Object.getOwnPropertySymbols(value).length > 0) this.notJson(depth, 'an object with symbol keys');
    const old = current as JsonObject;
    const out: JsonObject = {};
    for (const key of Object.keys(value)) {
      this.tokens[depth] = key;
      setOwn(out, key, this.beside(value[key], has(old, key) ? old[key] : undefined, depth + 1));
    }
    return out;
  }
}

/**
 * JSON deep equality: same scalars (`===`, so 0 equals -0), arrays of equal
 * elements in order, objects with the same own keys (in any order) holding
 * equal values. Identical references are equal without looking inside.
 */
export function deepEqual(a: unknown, b: unknown): boolean {
  return equal(a, b, 0);
}

function equal(a: unknown, b: unknown, depth: number): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (depth >= DEFAULT_MAX_DEPTH) {
    throw new StateError('ERR_TOO_DEEP', `deepEqual: values nest deeper than ${DEFAULT_MAX_DEPTH} levels (or hold a cycle)`, '');
  }
  const arr = Array.isArray(a);
  if (arr !== Array.isArray(b)) return false;
  if (arr) {
    const x = a as unknown[];
    const y = b as unknown[];
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!equal(x[i], y[i], depth + 1)) return false;
    return true;
  }
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  const keys = Object.keys(x);
  if (keys.length !== Object.keys(y).length) return false;
  for (const key of keys) {
    if (!hasOwn.call(y, key) || !equal(x[key], y[key], depth + 1)) return false;
  }
  return true;
}
