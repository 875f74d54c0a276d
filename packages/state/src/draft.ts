/**
 * What a draft function makes of a value: `update(fn)` on the server, `propose(fn)` in a replica.
 *
 * The function is given a draft of the value that it changes in place, or it returns a new value.
 * The draft copies on write: a container is copied the first time something in it changes, and
 * every container the change does not reach stays the value's own, shared by the result. So a
 * change costs about what it touches, not the size of the document (with a draft that was a deep
 * copy, a one-field change to a 1 MB document cost a copy and four walks of all of it), and `diff`
 * of the two values passes every shared part at once. Values are immutable: the result shares its
 * untouched parts with the value it was made from, and neither may be changed afterwards.
 *
 * What the function put into the draft is checked (and copied) as JSON, naming where something
 * JSON cannot hold was left; the parts it did not touch are JSON already. The result is a tree: a
 * part of the draft placed twice (`d.b = d.a`) is copied for its second place. Once the result is
 * made, the draft and every part of it stop working (a TypeError), so that nothing kept from the
 * function can change the value later.
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
import { diffTrusted, type DiffOptions } from './diff.js';
import { StateError } from './errors.js';
import { depthOption, has, jsonDepth, setOwn, Walker, type JsonObject, type JsonValue } from './json.js';
import { formatPointer } from './pointer.js';

type Container = JsonObject | JsonValue[];
type Keyed = Record<string | symbol, unknown>;

/** One container of the value as the draft function sees it. */
interface DraftState {
  /** The value's own container: never changed. */
  readonly base: Container;
  /** Its copy, made at the first change in it or below it; null while unchanged. */
  copy: Container | null;
  readonly parent: DraftState | null;
  /** Where `base` sits in the value: the root container at 0 (a Walker's depth). */
  readonly depth: number;
  /** The drafts handed out for `base`'s child containers, by key (an array's by index). */
  readonly children: Map<string | number, DraftState>;
  readonly proxy: Container;
  /** Being finished: a draft met again below itself is a cycle. */
  finishing: boolean;
  /** Its finished value, once placed. */
  done: JsonValue | undefined;
  /** Who made it, and makes its children's drafts. */
  readonly drafting: Drafting;
}

export interface ProduceOptions {
  /** Nesting depth the result may reach (default and most 1000). */
  maxDepth?: number;
  /** How the result is compared with the value when the function both changed its draft and returned something. */
  diff?: DiffOptions | undefined;
}

/**
 * The value `change(draft)` makes of `current` (see above). Throws StateError (ERR_NOT_JSON,
 * ERR_TOO_DEEP) naming where the function left something JSON cannot hold, and ERR_DRAFT_RESULT
 * saying why when it returned something that cannot be taken as the new value; the function's
 * own errors pass as they are. `current` must be JSON; it is not checked again, and it is never
 * changed.
 */
export function produce(current: JsonValue, change: (draft: JsonValue) => unknown, options: ProduceOptions = {}): JsonValue {
  const maxDepth = depthOption(options.maxDepth);
  if (!isContainer(current)) return resultOf(current, current, change(current), false, new Finisher(maxDepth), options);
  const drafting = new Drafting();
  try {
    const root = drafting.draft(current, null, 0);
    const returned = change(root.proxy);
    const finisher = new Finisher(maxDepth);
    return resultOf(current, root.proxy, returned, root.copy !== null, finisher, options, root);
  } finally {
    drafting.revoke();
  }
}

/** The new value: the finished draft, or what the function returned if that can be taken as one. */
function resultOf(current: JsonValue, draft: JsonValue, returned: unknown, changed: boolean, finisher: Finisher, options: ProduceOptions, root?: DraftState): JsonValue {
  const finished = (): JsonValue => (root === undefined ? current : finisher.finish(root, 0));
  if (returned === undefined || returned === draft) return finished();
  if (typeof (returned as { then?: unknown } | null)?.then === 'function') {
    // What it does after its first await meets a draft that no longer works: that rejection
    // belongs to this refusal, and must not go unhandled.
    (returned as PromiseLike<unknown>).then(undefined, () => {});
    refuse('a draft function must change its draft synchronously (await before calling it)');
  }
  // A draft changed and changed back is not a change.
  if (changed && diffTrusted(current, finished(), options.diff).length > 0) {
    refuse(`the function changed its draft and also returned ${describe(returned)}: change the draft and return nothing (write { draft.x.push(y); }, with braces), or return a new value without changing the draft`);
  }
  if (isContainer(returned) && drafts.has(returned)) {
    refuse(`the function returned a part of its draft (${describe(returned)}), not a new value: change the draft and return nothing (with braces)`);
  }
  if (isContainer(current) && (!isContainer(returned) || Array.isArray(returned) !== Array.isArray(current))) {
    // `d => d.list.splice(0, 1)` returns an array in place of an object value, `d => (d.done = true)` a boolean.
    refuse(`the function returned ${describe(returned)} in place of the whole value: change the draft and return nothing (with braces), or, to replace the value, pass the new value itself`);
  }
  // A new value: checked and copied, with any part of the draft in it finished in its place.
  return finisher.copy(returned, 0);
}

function refuse(message: string): never {
  throw new StateError('ERR_DRAFT_RESULT', message, '');
}

/** The draft behind each proxy handed to the function. */
const drafts = new WeakMap<object, DraftState>();
/** The draft behind each proxy's target (what the traps are given). */
const byTarget = new WeakMap<object, DraftState>();

function isContainer(value: unknown): value is Container {
  return typeof value === 'object' && value !== null;
}

/** The container as it stands now: the copy once there is one. */
function latest(state: DraftState): Keyed {
  return (state.copy ?? state.base) as unknown as Keyed;
}

/** An array's index as a number (the key its children are kept under), else the key itself. */
function childKey(state: DraftState, prop: string): string | number {
  if (!Array.isArray(state.base)) return prop;
  const index = Number(prop);
  return Number.isInteger(index) && index >= 0 && String(index) === prop ? index : prop;
}

/** Copies a draft's container, and each parent's up to the root, before its first change. */
function willChange(state: DraftState): void {
  if (state.copy !== null) return;
  // Spread defines each own key, "__proto__" included, as a data property.
  state.copy = Array.isArray(state.base) ? state.base.slice() : { ...state.base };
  if (state.parent !== null) willChange(state.parent);
}

/** What reading `prop` of a draft gives: a draft of the value's own child container, else what is there. */
function read(state: DraftState, prop: string | symbol): unknown {
  const source = latest(state);
  if (typeof prop === 'symbol' || !has(source, prop)) return Reflect.get(source, prop);
  const value = source[prop];
  // Anything the function put there is its own, and a draft is itself.
  if (!isContainer(value) || value !== (state.base as unknown as Keyed)[prop]) return value;
  const key = childKey(state, prop);
  let child = state.children.get(key);
  if (child === undefined || child.base !== value) {
    child = state.drafting.draft(value, state, state.depth + 1);
    state.children.set(key, child);
  }
  return child.proxy;
}

const handler: ProxyHandler<Container> = {
  get(target, prop) {
    return read(byTarget.get(target)!, prop);
  },
  set(target, prop, value) {
    const state = byTarget.get(target)!;
    const source = latest(state);
    // Setting what is there already (a draft's own child included) changes nothing.
    if (typeof prop !== 'symbol' && has(source, prop) && (Object.is(source[prop], value) || Object.is(read(state, prop), value))) return true;
    willChange(state);
    if (typeof prop === 'symbol') (state.copy as unknown as Keyed)[prop] = value;
    else setOwn(state.copy as unknown as Record<string, unknown>, prop, value);
    return true;
  },
  deleteProperty(target, prop) {
    const state = byTarget.get(target)!;
    if (!Object.prototype.hasOwnProperty.call(latest(state), prop)) return true;
    willChange(state);
    return Reflect.deleteProperty(state.copy!, prop);
  },
  defineProperty(target, prop, descriptor) {
    const state = byTarget.get(target)!;
    willChange(state);
    return Reflect.defineProperty(state.copy!, prop, descriptor);
  },
  has(target, prop) {
    return prop in latest(byTarget.get(target)!);
  },
  ownKeys(target) {
    return Reflect.ownKeys(latest(byTarget.get(target)!));
  },
  getOwnPropertyDescriptor(target, prop) {
    const state = byTarget.get(target)!;
    const descriptor = Reflect.getOwnPropertyDescriptor(latest(state), prop);
    // An array's length is as its target's (not configurable); every other property is
    // reported configurable, which the target (that lacks it) allows, and with the draft of a
    // child container as its value, as reading it gives.
    if (descriptor === undefined || (Array.isArray(state.base) && prop === 'length')) return descriptor;
    if ('value' in descriptor) descriptor.value = read(state, prop);
    descriptor.configurable = true;
    return descriptor;
  },
  getPrototypeOf(target) {
    return Object.getPrototypeOf(byTarget.get(target)!.base);
  },
  setPrototypeOf() {
    return false;
  },
  preventExtensions() {
    return false;
  },
};

class Drafting {
  private readonly revokes: (() => void)[] = [];

  /** The draft of `base`, a container of the value at `depth`. */
  draft(base: Container, parent: DraftState | null, depth: number): DraftState {
    // The target only gives the proxy its kind (Array.isArray of a proxy is its target's); the
    // traps read the draft's own container.
    const target: Container = Array.isArray(base) ? [] : {};
    const { proxy, revoke } = Proxy.revocable<Container>(target, handler);
    const state: DraftState = { base, copy: null, parent, depth, children: new Map(), proxy, finishing: false, done: undefined, drafting: this };
    drafts.set(proxy, state);
    byTarget.set(target, state);
    this.revokes.push(revoke);
    return state;
  }

  /** Every draft handed out stops working. */
  revoke(): void {
    for (const revoke of this.revokes) revoke();
    this.revokes.length = 0;
  }
}

/**
 * Makes the result of a draft: each changed container's copy with its children finished in
 * place, the value's own containers elsewhere; what the function put in is checked and copied
 * (the Walker's `copy`, which hands every draft it meets back here).
 */
class Finisher extends Walker {
  constructor(maxDepth: number) {
    super(maxDepth, 'value');
  }

  override adopt(value: object, depth: number): JsonValue | undefined {
    const state = drafts.get(value);
    return state === undefined ? undefined : this.finish(state, depth);
  }

  /** The finished value of a draft placed at `depth`. */
  finish(state: DraftState, depth: number): JsonValue {
    if (state.done !== undefined) {
      // Placed a second time: a copy of its own, so that the result stays a tree.
      return this.copy(state.done, depth);
    }
    if (state.finishing) this.cycle(depth);
    if (state.copy === null) {
      // Unchanged: the value's own, JSON already; only a move to another depth needs a look.
      if (depth !== state.depth) this.fits(state.base, depth);
      state.done = state.base;
      return state.base;
    }
    state.finishing = true;
    if (depth >= this.maxDepth) {
      this.stack[depth] = state.copy;
      this.tooDeep(depth + 1);
    }
    this.stack[depth] = state.copy;
    const copy = state.copy as unknown as Keyed;
    const base = state.base as unknown as Keyed;
    if (Object.getOwnPropertySymbols(copy).length > 0) this.notJson(depth, 'an object with symbol keys');
    const finishChild = (key: string | number): void => {
      this.tokens[depth] = key;
      const child = copy[key];
      if (isContainer(child) && child === base[key] && !drafts.has(child)) {
        // The value's own child in its own place: finished through its draft if it has one.
        const draft = state.children.get(key);
        if (draft !== undefined && draft.base === child) copy[key] = this.finish(draft, depth + 1);
        else if (depth !== state.depth) this.fits(child, depth + 1);
      } else copy[key] = this.copy(child, depth + 1);
    };
    if (Array.isArray(copy)) for (let i = 0; i < copy.length; i++) finishChild(i);
    else for (const key of Object.keys(copy)) finishChild(key);
    state.finishing = false;
    state.done = state.copy;
    return state.copy;
  }

  /** Throws unless a container of the value, moved to `depth`, still nests within the limit. */
  private fits(value: Container, depth: number): void {
    if (depth + jsonDepth(value) > this.maxDepth) {
      throw new StateError('ERR_TOO_DEEP', `${this.where(depth)} nests deeper than the limit of ${this.maxDepth} levels`, formatPointer(this.tokens.slice(0, depth)));
    }
  }

  /** A draft met inside itself. */
  private cycle(depth: number): never {
    throw new StateError('ERR_NOT_JSON', `${this.where(depth)} is a cycle (a part of the draft placed inside itself), which JSON cannot hold`, formatPointer(this.tokens.slice(0, depth)));
  }
}

/** A value, briefly, for an error message. */
function describe(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
