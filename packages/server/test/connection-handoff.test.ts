/**
 * The primary's hand-off of connections to the workers of `--workers` (connection-handoff.ts), with real
 * sockets and stand-in workers: a connection a worker never took is closed when the worker exits
 * (its client reconnects at once instead of hanging), one that could not be sent goes to another
 * worker, connections wait, bounded, while no worker is ready, and a worker that stops answering
 * (alive but stuck) gets no new connections until it answers again.
 */
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Worker } from 'node:cluster';
import { ConnectionHandoff } from '../src/http/connection-handoff.js';

/**
 * A stand-in for a cluster worker: records the connections it is sent; `failing` makes its line
 * closed. Given a hand-off, it answers its pings while `answering`.
 */
class FakeWorker {
  readonly sent: { message: unknown; socket: Socket }[] = [];
  failing = false;
  answering = true;
  pings = 0;
  constructor(private readonly handoff?: ConnectionHandoff) {}
  isConnected(): boolean {
    return true;
  }
  send(message: unknown, socket: Socket | (() => void), _options?: unknown, callback?: (error: Error | null) => void): boolean {
    if ((message as { k: string }).k === 'ping') {
      this.pings++;
      if (this.answering && this.handoff) queueMicrotask(() => this.handoff!.receive(asWorker(this), { k: 'pong' }));
      return true;
    }
    socket = socket as Socket;
    callback = callback!;
    if (this.failing) {
      queueMicrotask(() => callback(Object.assign(new Error('channel closed'), { code: 'ERR_IPC_CHANNEL_CLOSED' })));
      return false;
    }
    this.sent.push({ message, socket });
    queueMicrotask(() => callback(null));
    return true;
  }
}

const asWorker = (fake: FakeWorker): Worker => fake as unknown as Worker;

let server: Server | undefined;
/** Both ends of every connection of a test, closed after it. */
const sockets: Socket[] = [];

/** A listener that gives every accepted connection, unread, to `handoff`. */
async function listen(handoff: ConnectionHandoff): Promise<number> {
  server = createServer({ pauseOnConnect: true }, (socket) => {
    sockets.push(socket);
    handoff.hand(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** A client connection, and a promise of its end (true when the other side closed it). */
async function dial(port: number): Promise<{ socket: Socket; closed: Promise<boolean> }> {
  const socket = connect(port, '127.0.0.1');
  sockets.push(socket);
  socket.on('error', () => {});
  const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(true)));
  await once(socket, 'connect');
  return { socket, closed };
}

async function until(predicate: () => boolean, what: string, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const idOf = (message: unknown): number => (message as { id: number }).id;
const within = <T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> => Promise.race([promise, new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), ms))]);

describe('the hand-off of connections to workers', () => {
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    if (server) await new Promise((resolve) => server!.close(resolve));
    server = undefined;
  });

  it('hands connections to the ready workers in turn; a taken one is let go by the primary', async () => {
    const handoff = new ConnectionHandoff();
    const one = new FakeWorker();
    const two = new FakeWorker();
    assert.equal(handoff.receive(asWorker(one), { k: 'ready' }), true);
    handoff.receive(asWorker(two), { k: 'ready' });
    assert.equal(handoff.readyCount, 2);
    const port = await listen(handoff);
    for (let i = 0; i < 4; i++) await dial(port);
    await until(() => one.sent.length + two.sent.length === 4, 'four connections handed');
    assert.deepEqual([one.sent.length, two.sent.length], [2, 2]);
    assert.deepEqual(one.sent[0]!.message, { k: 'connection', id: idOf(one.sent[0]!.message) });

    const { socket } = one.sent[0]!;
    assert.equal(handoff.receive(asWorker(one), { k: 'took', id: idOf(one.sent[0]!.message) }), true);
    assert.equal(socket.destroyed, true, "the primary's descriptor is closed once the worker took the connection");
    assert.equal(one.sent[1]!.socket.destroyed, false, 'one not yet taken stays open');
    // An error on a connection the primary holds (a reset) must not take the primary down.
    assert.doesNotThrow(() => one.sent[1]!.socket.emit('error', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })));
    // Messages that are not the hand-off's are left to the broker.
    assert.equal(handoff.receive(asWorker(one), { k: 'call', id: 1 }), false);
    assert.equal(handoff.receive(asWorker(one), null), false);
  });

  it('closes the connections a worker that exits never took, so their clients reconnect at once', async () => {
    const handoff = new ConnectionHandoff();
    const dying = new FakeWorker();
    handoff.receive(asWorker(dying), { k: 'ready' });
    const port = await listen(handoff);
    const taken = await dial(port);
    const lost = await dial(port);
    await until(() => dying.sent.length === 2, 'two connections handed');
    handoff.receive(asWorker(dying), { k: 'took', id: idOf(dying.sent[0]!.message) });
    handoff.remove(asWorker(dying));
    assert.equal(await within(lost.closed, 2_000), true, 'the connection the worker never took is closed');
    assert.equal(handoff.readyCount, 0);
    // The taken one was the worker's own from then on (here its stand-in closed it with the primary's copy).
    assert.equal(await within(taken.closed, 1_000), true);
  });

  it('gives a connection that could not be sent to another worker, and sends the failing one no more', async () => {
    const handoff = new ConnectionHandoff();
    const dying = new FakeWorker();
    const alive = new FakeWorker();
    dying.failing = true;
    handoff.receive(asWorker(dying), { k: 'ready' });
    handoff.receive(asWorker(alive), { k: 'ready' });
    const port = await listen(handoff);
    for (let i = 0; i < 3; i++) await dial(port);
    await until(() => alive.sent.length === 3, 'every connection at the live worker');
    assert.equal(handoff.readyCount, 1);
    assert.equal(dying.sent.length, 0);
  });

  it('keeps connections while no worker is ready and hands them to the first that is', async () => {
    const handoff = new ConnectionHandoff();
    const port = await listen(handoff);
    const first = await dial(port);
    first.socket.write('GET / HTTP/1.1\r\n\r\n');
    await dial(port);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const late = new FakeWorker();
    handoff.receive(asWorker(late), { k: 'ready' });
    await until(() => late.sent.length === 2, 'the waiting connections handed');
    // Handed unread: what the client wrote is still there for the worker.
    const data = await within(once(late.sent[0]!.socket.resume(), 'data'), 1_000);
    assert.notEqual(data, 'timeout');
    assert.match(String((data as Buffer[])[0]), /^GET \/ HTTP\/1.1/);
  });

  it('closes waiting connections past the limit of their number and past the wait', async () => {
    const handoff = new ConnectionHandoff({ maxWaiting: 2, waitMs: 300 });
    const port = await listen(handoff);
    const kept = [await dial(port), await dial(port)];
    const third = await dial(port);
    assert.equal(await within(third.closed, 1_000), true, 'a third waiting connection is closed at once');
    for (const { closed } of kept) assert.equal(await within(closed, 100), 'timeout', 'the first two wait');
    for (const { closed } of kept) assert.equal(await within(closed, 2_000), true, 'and are closed after the wait');
  });

  it('hands no new connections to a worker that stops answering, and hands them to it again once it answers', async () => {
    const stuckMs = 300;
    const reports: [string, boolean][] = [];
    const handoff = new ConnectionHandoff({ probeMs: 50, stuckMs, onStuck: (worker, stuck) => reports.push([worker === asWorker(stalled) ? 'stalled' : 'live', stuck]) });
    const live = new FakeWorker(handoff);
    const stalled = new FakeWorker(handoff);
    handoff.receive(asWorker(live), { k: 'ready' });
    handoff.receive(asWorker(stalled), { k: 'ready' });
    const port = await listen(handoff);
    try {
      await until(() => stalled.pings > 0 && live.pings > 0, 'both asked to answer');
      // The stalled one stops answering (a loop that never yields): once not heard from for
      // stuckMs, every new connection goes to the other one.
      stalled.answering = false;
      await until(() => handoff.stuckCount === 1, 'the stalled worker noticed', 2_000);
      assert.deepEqual(reports, [['stalled', true]]);
      const before = stalled.sent.length;
      for (let i = 0; i < 6; i++) await dial(port);
      await until(() => live.sent.length + stalled.sent.length === before + 6, 'six connections handed');
      assert.equal(stalled.sent.length, before, 'nothing new for the stalled worker');

      // It answers again: it takes its turn again.
      stalled.answering = true;
      await until(() => handoff.stuckCount === 0, 'the worker heard again');
      assert.deepEqual(reports, [['stalled', true], ['stalled', false]]);
      for (let i = 0; i < 4; i++) await dial(port);
      await until(() => live.sent.length + stalled.sent.length === before + 10, 'four more handed');
      assert.equal(stalled.sent.length, before + 2, 'its turn again: two of the four');

      // Neither answers: connections are still handed, in turn, rather than left unanswered.
      live.answering = false;
      stalled.answering = false;
      await until(() => handoff.stuckCount === 2, 'both noticed', 2_000);
      for (let i = 0; i < 2; i++) await dial(port);
      await until(() => live.sent.length + stalled.sent.length === before + 12, 'two more handed');
    } finally {
      handoff.close();
    }
  });

  it('closes the waiting connections when the server stops', async () => {
    const handoff = new ConnectionHandoff();
    const port = await listen(handoff);
    const waiting = await dial(port);
    await new Promise((resolve) => setTimeout(resolve, 20));
    handoff.close();
    assert.equal(await within(waiting.closed, 1_000), true);
  });
});
