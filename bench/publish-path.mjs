// The publish path alone, in one process: CPU per `server.publish` to channels nobody subscribes to,
// with the memory engine and the bench's options. No sockets, no subscribers, no load generator:
// what Perihelion spends per message before any delivery (validation, serialisation, position,
// history, subscriber look-up), to compare two builds of the server on one machine.
//
//   node bench/publish-path.mjs [publishes per round, default 200000] [channels, default 1000] [rounds, default 8]
//
// Build first (`npm run build`). Prints each round and the median; the first round includes warm-up.
import { PERIHELION_LOAD_TEST_OPTIONS } from './servers/common.mjs';

const { createServer } = await import(new URL('../packages/server/dist/src/index.js', import.meta.url).href);

const [publishes, channels, rounds] = [200_000, 1000, 8].map((fallback, i) => {
  const value = process.argv[2 + i] === undefined ? fallback : Number(process.argv[2 + i]);
  if (!Number.isSafeInteger(value) || value < 1) {
    console.error(`usage: node bench/publish-path.mjs [publishes] [channels] [rounds]: positive integers, got ${process.argv[2 + i]}`);
    process.exit(2);
  }
  return value;
});

const server = createServer(PERIHELION_LOAD_TEST_OPTIONS);
await server.whenReady();

const results = [];
for (let round = 0; round < rounds; round++) {
  const before = process.cpuUsage();
  for (let i = 0; i < publishes; i++) await server.publish(`/bench/c${i % channels}`, { run: 'publish-path', seq: i, t: 123.456 });
  const spent = process.cpuUsage(before);
  const perPublish = (spent.user + spent.system) / publishes;
  results.push(perPublish);
  console.log(`round ${round + 1}: ${perPublish.toFixed(2)} µs per publish`);
}
const sorted = results.slice(1).sort((a, b) => a - b);
console.log(`median of rounds 2-${rounds}: ${(sorted[Math.floor(sorted.length / 2)] ?? results[0]).toFixed(2)} µs per publish (${publishes} publishes over ${channels} channels per round)`);
await server.close();
