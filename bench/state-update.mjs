#!/usr/bin/env node
// What one change to a large state channel costs the server, at growing sizes: a to-do list of
// N items (about 90 bytes of JSON each), one item's `done` flipped per update, published to the
// channel (no subscriber: the cost is the server's own). Three ways, side by side in one run:
//
//   draft      `update(d => { d.items[i].done = !d.items[i].done })`: the draft copies on write
//   value      `update({ ...v, items: v.items.map(...) })`: a new value, checked and copied
//   deep copy  what a draft was before it copied on write: the whole value copied, and both
//              values checked and compared in full (`clone` and `diff` of @perihelion/state)
//
// The draft should cost about the same at every size but the one array it copies; the deep copy
// grows with the whole document, and holds the event loop for as long (measured: 0.4 against
// 8 ms per change at 10 000 items, a 0.9 MB document).
//
//   node bench/state-update.mjs [sizes, default 1000,10000,50000] [--changes N, default 200]
//
// Build first (`npm run build`). Each size alternates the three ways over three rounds and
// prints the median, ms per change.
import { createServer } from '../packages/server/dist/src/index.js';
import { clone, diff } from '../packages/state/dist/src/index.js';

const args = process.argv.slice(2);
let sizes = [1000, 10_000, 50_000];
let changes = 200;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--changes') changes = Number(args[++i]);
  else sizes = args[i].split(',').map(Number);
}
if (sizes.some((n) => !Number.isSafeInteger(n) || n < 1 || n > 1_000_000) || !Number.isSafeInteger(changes) || changes < 1) {
  console.error('usage: node bench/state-update.mjs [sizes, each 1 to 1000000, e.g. 1000,10000] [--changes N ≥ 1]');
  process.exit(2);
}

const server = createServer({});
const median = (list) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)];
const flip = (item) => ({ ...item, done: !item.done });

const rows = [];
for (const size of sizes) {
  const items = Array.from({ length: size }, (_, i) => ({ id: `item-${i}`, title: `Task number ${i}, with some words`, done: false, tags: ['home'] }));
  const state = await server.state(`/bench/todos/${size}`, { items });
  const bytes = JSON.stringify(state.get()).length;
  const ways = {
    draft: async (i) => {
      await state.update((d) => {
        d.items[i].done = !d.items[i].done;
      });
    },
    value: async (i) => {
      const v = state.get();
      await state.update({ ...v, items: v.items.map((item, j) => (j === i ? flip(item) : item)) });
    },
    'deep copy': async (i) => {
      // The former draft's work, then the update of its result (a value: copied and compared again).
      const current = state.get();
      const draft = clone(current);
      draft.items[i].done = !draft.items[i].done;
      diff(current, draft);
      await state.update(draft);
    },
  };
  const times = Object.fromEntries(Object.keys(ways).map((way) => [way, []]));
  for (let round = 0; round < 3; round++) {
    for (const [way, change] of Object.entries(ways)) {
      process.stderr.write(`${size} items (${(bytes / 1e6).toFixed(2)} MB), round ${round + 1}/3: ${way}…\n`);
      const started = performance.now();
      for (let n = 0; n < changes; n++) await change(n % size);
      times[way].push((performance.now() - started) / changes);
    }
  }
  rows.push({ size, bytes, ...Object.fromEntries(Object.entries(times).map(([way, list]) => [way, median(list)])) });
  await state.close();
}
await server.close();

console.log('| items | JSON MB | draft ms/change | value ms/change | deep copy ms/change | deep copy ÷ draft |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
for (const row of rows) {
  console.log(`| ${row.size} | ${(row.bytes / 1e6).toFixed(2)} | ${row.draft.toFixed(3)} | ${row.value.toFixed(3)} | ${row['deep copy'].toFixed(3)} | ${(row['deep copy'] / row.draft).toFixed(1)} |`);
}
