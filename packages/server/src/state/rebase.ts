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

interface Reliance {
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

/** The first thing `patch` relies on that one of `changes` altered, as a path; null when none. */
export function conflictOf(patch: readonly Operation[], changes: readonly Change[]): string | null {
  for (const reliance of reliancesOf(patch)) {
    if (changes.some((change) => clashes(reliance, change))) return reliance.path || '/';
  }
  return null;
}

function reliancesOf(patch: readonly Operation[]): Reliance[] {
  const reliances: Reliance[] = [];
  for (const op of patch) {
    if (op.op === 'add' && op.path.endsWith('/-')) reliances.push({ path: op.path.slice(0, -2), append: true });
    else reliances.push({ path: op.path, append: false });
    if (op.op === 'move' || op.op === 'copy') reliances.push({ path: op.from, append: false });
  }
  return reliances;
}

function clashes(reliance: Reliance, change: Change): boolean {
  if (reliance.append) {
    // Other appends and edits inside the array do not matter; the array replaced, or moved by a
    // structural change of an array above it, does.
    if (change.path === reliance.path) return !change.structural;
    return within(reliance.path, change.path);
  }
  // At, inside or above what changed (inside a restructured array: through an index that moved).
  return within(reliance.path, change.path) || within(change.path, reliance.path);
}

/** `path` is `ancestor` or inside it. */
function within(path: string, ancestor: string): boolean {
  return path === ancestor || path.startsWith(`${ancestor}/`);
}

/** For a path ending in an array index (or "-"): the array's path; else null. */
function arrayOf(path: string): string | null {
  const cut = path.lastIndexOf('/');
  const last = path.slice(cut + 1);
  return cut >= 0 && (last === '-' || /^\d+$/.test(last)) ? path.slice(0, cut) : null;
}
