#!/usr/bin/env node
// What the perihelion-workers bench server adds of its own: the hand-off of each published message
// from the publisher in the primary to a worker over the node:cluster IPC channel, measured alone.
// A primary publishes to one worker on the bench's schedule (ticks of a millisecond, what each tick
// publishes in one IPC message, as servers/perihelion-workers.mjs does) for 4 s per rate; the worker
// only counts. Prints the CPU of each side per message.
//
//   node bench/ipc-handoff.mjs [RATE,RATE,…]      (default 5000,20000,40000 msg/s)
import cluster from 'node:cluster';

if (cluster.isWorker) {
  let count = 0;
  process.on('message', (message) => {
    if (message.bench === 'publish') count += message.batch.length;
    else if (message.bench === 'report') process.send({ count, cpu: process.cpuUsage() });
  });
} else {
  const rates = (process.argv[2] ?? '5000,20000,40000').split(',').map(Number);
  const SECONDS = 4;
  const worker = cluster.fork();
  await new Promise((resolve) => worker.once('online', resolve));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const report = () =>
    new Promise((resolve) => {
      worker.once('message', resolve);
      worker.send({ bench: 'report' });
    });
  const cpuUs = (usage) => usage.user + usage.system;
  for (const rate of rates) {
    const before = await report();
    const primaryBefore = process.cpuUsage();
    const total = rate * SECONDS;
    const startedAt = performance.now();
    let seq = 0;
    await new Promise((resolve) => {
      const tick = () => {
        const now = performance.now();
        const batch = [];
        while (seq < total && startedAt + (seq * 1000) / rate <= now) {
          batch.push([`c${seq % 1000}`, { run: `perihelion-workers-${rate}-1764829000000`, seq, t: now }]);
          seq++;
        }
        if (batch.length > 0) worker.send({ bench: 'publish', batch });
        if (seq < total) setTimeout(tick, 1);
        else resolve();
      };
      tick();
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const after = await report();
    const primaryUs = cpuUs(process.cpuUsage(primaryBefore));
    const workerUs = cpuUs(after.cpu) - cpuUs(before.cpu);
    const received = after.count - before.count;
    console.log(`${rate} msg/s: ${received}/${total} handed over; primary ${(primaryUs / total).toFixed(1)} µs/msg, worker ${(workerUs / total).toFixed(1)} µs/msg`);
  }
  worker.kill();
  process.exit(0);
}
