/**
 * What a draft function made, for `update(fn)` on the server and `propose(fn)` in a replica: the
 * draft changed in place (the function returned nothing, or the draft), or a new value returned.
 *
 * An arrow function whose body is an expression returns whatever the expression gives, and the
 * usual ones give something that is not a new value: `d => d.items.push(x)` a number,
 * `d => (d.status = 'open')` a string, `d => d.items.sort()` a part of the draft. Taken as the new
 * value, any of them would replace the whole document, and some only when the draft happened not
 * to change (the status already open, the list already sorted). So these are refused whatever
 * the data: a draft changed and something else returned; a part of the draft returned; a value
 * that is not of the same kind as the current one (an object, an array) returned in place of it.
 * To replace an object or array with something else, pass the new value itself.
 */
import { diff, type DiffOptions } from './diff.js';
import type { JsonValue } from './json.js';

/** The new value `fn(draft)` made, `returned` being what it returned; throws an Error saying why not. */
export function draftResult(current: JsonValue, draft: JsonValue, returned: unknown, options?: DiffOptions): unknown {
  if (returned === undefined || returned === draft) return draft;
  if (typeof (returned as { then?: unknown } | null)?.then === 'function') throw new Error('a draft function must change its draft synchronously (await before calling it)');
  const shown = describe(returned);
  if (diff(current, draft, options).length > 0) {
    throw new Error(`the function changed its draft and also returned ${shown}: change the draft and return nothing (write { draft.x.push(y); }, with braces), or return a new value without changing the draft`);
  }
  if (typeof returned === 'object' && returned !== null && within(draft, returned)) {
    throw new Error(`the function returned a part of its draft (${shown}), not a new value: change the draft and return nothing (with braces)`);
  }
  if (typeof current === 'object' && current !== null && (typeof returned !== 'object' || returned === null || Array.isArray(returned) !== Array.isArray(current))) {
    // `d => d.list.splice(0, 1)` returns an array in place of an object value, `d => (d.done = true)` a boolean.
    throw new Error(`the function returned ${shown} in place of the whole value: change the draft and return nothing (with braces), or, to replace the value, pass the new value itself`);
  }
  return returned;
}

/** Whether `target` is `root` or an object or array inside it. */
function within(root: unknown, target: object): boolean {
  if (root === target) return true;
  if (typeof root !== 'object' || root === null) return false;
  for (const item of Object.values(root)) if (within(item, target)) return true;
  return false;
}

/** A value, briefly, for an error message. */
function describe(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
