/**
 * When a proposal made on an older version may still be applied: the rebase rule of state
 * channels. A proposal is rebased onto the current value when none of what it relies on changed
 * since its base; otherwise it is a conflict (its client rolls it back and may propose again).
 *
 * What a published patch changed, per operation:
 * - a value at a path (replace, or add/remove of an object member): that path;
 * - the structure of an array (add, remove, move or copy at an index): the whole array, since
 *   the indexes of later elements moved.
 *
 * What a proposal relies on, per operation: its path (and `from`), which conflicts with a change
 * at, inside or above it, and with a structural change of any array it reaches into by index.
 * Appending (`add` at `<array>/-`) relies only on the array being there: it commits with other
 * appends and with edits of the array's elements, so ten clients adding to one list at once all
 * succeed.
 */
import type { Operation } from '@perihelion/state';

export interface Change {
  path: string;
  /** The elements of the array at `path` were added, removed or moved. */
  structural: boolean;
}

export interface Reliance {
  path: string;
  /** An append to the array at `path`. */
  append: boolean;
}

/** What a published patch changed. */
export function changesOf(patch: readonly Operation[]): Change[] {
  const changes: Change[] = [];
  const note = (path: string, moves: boolean): void => {
    const array = moves ? arrayOf(path) : null;
    changes.push(array === null ? { path, structural: false } : { path: array, structural: true });
  };
  for (const op of patch) {
    if (op.op === 'test') continue;
    note(op.path, op.op !== 'replace');
    if (op.op === 'move') note(op.from, true);
  }
  return changes;
}

interface Node {
  children: Map<string, Node> | null;
  /** A value at this path was set (replaced, added or removed as an object member). */
  set: boolean;
  /** The array at this path was restructured. */
  structural: boolean;
}

/**
 * What one published patch changed, as a tree of its paths' segments, so that checking a
 * proposal against it costs the length of the proposal's paths, however many values the patch
 * changed (a proposal of thousands of operations against patches of thousands of changes would
 * otherwise compare every pair).
 */
export class ChangeIndex {
  private readonly root: Node = { children: null, set: false, structural: false };
  private readonly empty: boolean;

  constructor(patch: readonly Operation[]) {
    const changes = changesOf(patch);
    this.empty = changes.length === 0;
    for (const change of changes) {
      let node = this.root;
      for (const token of segments(change.path)) {
        node.children ??= new Map();
        let next = node.children.get(token);
        if (!next) node.children.set(token, (next = { children: null, set: false, structural: false }));
        node = next;
      }
      if (change.structural) node.structural = true;
      else node.set = true;
    }
  }

  /** The first thing `reliances` names that this patch altered, as a path; null when none. */
  conflict(reliances: readonly Reliance[]): string | null {
    if (this.empty) return null;
    for (const reliance of reliances) if (this.clashes(reliance)) return reliance.path || '/';
    return null;
  }

  private clashes(reliance: Reliance): boolean {
    let node = this.root;
    for (const token of segments(reliance.path)) {
      // Something above it changed (inside a restructured array: through an index that moved).
      if (node.set || node.structural) return true;
      const next = node.children?.get(token);
      if (!next) return false;
      node = next;
    }
    // An append: other appends and edits inside the array do not matter; the array replaced does.
    if (reliance.append) return node.set;
    // At or inside what it relies on.
    return true;
  }
}

/** The segments of a JSON Pointer as written (escapes kept: both sides are compared as written). */
function segments(path: string): string[] {
  return path === '' ? [] : path.slice(1).split('/');
}

/** What a proposal relies on, per operation. */
export function reliancesOf(patch: readonly Operation[]): Reliance[] {
  const reliances: Reliance[] = [];
  for (const op of patch) {
    if (op.op === 'add' && op.path.endsWith('/-')) reliances.push({ path: op.path.slice(0, -2), append: true });
    else reliances.push({ path: op.path, append: false });
    if (op.op === 'move' || op.op === 'copy') reliances.push({ path: op.from, append: false });
  }
  return reliances;
}

/** For a path ending in an array index (or "-"): the array's path; else null. */
function arrayOf(path: string): string | null {
  const cut = path.lastIndexOf('/');
  const last = path.slice(cut + 1);
  return cut >= 0 && (last === '-' || /^\d+$/.test(last)) ? path.slice(0, cut) : null;
}
