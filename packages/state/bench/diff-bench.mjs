// Times diff() (and applyPatch()) on a ~1 MB document: one field changed, and
// keyed arrays reordered, side by side with fast-json-patch's compare() on the same pairs in the
// same run (the machine is shared: read the ratio). Prints the median of N runs in ms:
//   npm run bench:state [-- runs]      (builds first)
import jsonPatch from 'fast-json-patch';
import { applyPatch, clone, diff } from '../dist/src/index.js';

const { compare } = jsonPatch;

const RUNS = Number(process.argv[2] ?? 21);

function records(n, keyed) {
  return Array.from({ length: n }, (_, i) => ({
    ...(keyed ? { id: `r${i}` } : {}),
    name: `record number ${i}`,
    email: `user${i}@example.com`,
    tags: ['alpha', 'beta'],
    score: i * 1.5,
    active: i % 3 === 0,
  }));
}

function shuffled(list, seed) {
  const out = list.slice();
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

function median(fn) {
  for (let i = 0; i < 3; i++) fn();
  const times = [];
  let result;
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    result = fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { ms: times[Math.floor(times.length / 2)], result };
}

function describe({ ms, result }) {
  const isPatch = Array.isArray(result) && result.every((op) => typeof op.op === 'string');
  return `${ms.toFixed(2).padStart(8)} ms ${isPatch ? `${String(result.length).padStart(6)} ops ${String(JSON.stringify(result).length).padStart(8)} B` : ''.padEnd(24)}`;
}

/** One case: ours, and fast-json-patch's compare() on the same pair when `peer` is given. */
function row(name, ours, peer) {
  const ratio = peer ? `   ×${(peer.ms / ours.ms).toFixed(1)}` : '';
  console.log(`${name.padEnd(58)} ${describe(ours)}${peer ? `   | ${describe(peer)}${ratio}` : ''}`);
}

function both(name, a, b) {
  row(name, median(() => diff(a, b)), median(() => compare(a, b)));
}

const doc = { records: records(10_000, true), meta: { version: 1 } };
const docBytes = JSON.stringify(doc).length;
const list = doc.records.slice();
list[5000] = { ...list[5000], name: 'changed' };
const changed = { ...doc, records: list };
const changedCopy = clone(changed);
const docCopy = clone(doc);

const plain = { records: records(10_000, false), meta: { version: 1 } };
const plainList = plain.records.slice();
plainList[5000] = { ...plainList[5000], name: 'changed' };
const plainChanged = { ...plain, records: plainList };

console.log(`median of ${RUNS} runs; document ${(docBytes / 1e6).toFixed(2)} MB, 10,000 records; node ${process.version}`);
console.log(`${'case'.padEnd(58)} ${'@perihelion/state diff'.padEnd(35)}   | fast-json-patch compare()   (×: how many times slower it is)\n`);
both('1 MB, one field changed, keyed (immutable update)', doc, changed);
both('1 MB, one field changed, keyed (full copy, nothing shared)', doc, changedCopy);
both('1 MB, one field changed, no ids (immutable update)', plain, plainChanged);
const plainCopy = clone(plainChanged);
both('1 MB, one field changed, no ids (full copy)', plain, plainCopy);
both('1 MB, no change (same reference)', doc, doc);
both('1 MB, no change (full copy)', doc, docCopy);
const patch = diff(doc, changed);
row('applyPatch of that one-field patch to the 1 MB document', median(() => applyPatch(doc, patch)));

const moved = doc.records.slice();
moved.splice(100, 0, moved.splice(9000, 1)[0]);
both('10,000 keyed records, one moved', doc.records, moved);
for (const n of [1_000, 10_000]) {
  const a = records(n, true);
  const b = shuffled(a, 42);
  const r = median(() => diff(a, b));
  row(`${n.toLocaleString('en')} keyed records, fully shuffled`, r, median(() => compare(a, b)));
  const p = r.result;
  row(`  applyPatch of those ${p.length} moves`, median(() => applyPatch(a, p)));
}
const small = records(1_000, false);
const smallShuffled = shuffled(small, 7);
both('1,000 records without ids, shuffled (edit distance)', small, smallShuffled);
