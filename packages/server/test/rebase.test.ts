/**
 * The rebase rule of state channels, as ChangeIndex applies it, against the rule written out
 * pair by pair (every operation of a proposal against every change of a patch): the same verdict
 * on thousands of random proposals and patches over a small set of paths, where clashes are common.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Operation } from '@perihelion/state';
import { ChangeIndex, changesOf, reliancesOf } from '../src/state/rebase.js';

/** The rule, one pair of what the proposal relies on and what the patch changed at a time (see rebase.ts). */
function pairwiseConflict(proposal: readonly Operation[], patch: readonly Operation[]): string | null {
  const within = (path: string, ancestor: string): boolean => path === ancestor || path.startsWith(`${ancestor}/`);
  const changes = changesOf(patch);
  for (const reliance of reliancesOf(proposal)) {
    const clash = changes.some((change) => {
      if (reliance.append) return change.path === reliance.path ? !change.structural : within(reliance.path, change.path);
      return within(reliance.path, change.path) || within(change.path, reliance.path);
    });
    if (clash) return reliance.path || '/';
  }
  return null;
}

/** A small deterministic generator (mulberry32), so that a failure can be run again. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('rebase rule: ChangeIndex', () => {
  it('gives the verdict of the pair-by-pair rule on random proposals and patches', () => {
    const next = random(Number(process.env.REBASE_SEED ?? 7));
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
    const path = (): string => {
      const depth = Math.floor(next() * 4);
      return Array.from({ length: depth }, () => `/${pick(['a', 'b', 'list', '0', '1', '-', 'a~1b'])}`).join('');
    };
    const operation = (): Operation => {
      const op = pick(['add', 'remove', 'replace', 'move', 'copy', 'test'] as const);
      if (op === 'move' || op === 'copy') return { op, path: path(), from: path() };
      if (op === 'remove') return { op, path: path() };
      return { op, path: path(), value: 1 };
    };
    let clashes = 0;
    for (let run = 0; run < 5000; run++) {
      const proposal = Array.from({ length: 1 + Math.floor(next() * 3) }, operation);
      const patch = Array.from({ length: Math.floor(next() * 4) }, operation);
      const expected = pairwiseConflict(proposal, patch);
      if (expected !== null) clashes++;
      assert.equal(new ChangeIndex(patch).conflict(reliancesOf(proposal)), expected, `proposal ${JSON.stringify(proposal)} against patch ${JSON.stringify(patch)}`);
    }
    assert.ok(clashes > 1000 && clashes < 4000, `both verdicts are common (${clashes} clashes of 5000)`);
  });
});
