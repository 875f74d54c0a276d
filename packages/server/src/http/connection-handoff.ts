/**
 * How the workers of `perihelion serve --workers N` get their connections: the primary process
 * accepts each one and hands it to the next worker that is ready, which acknowledges it. The
 * worker serves it with `Perihelion.serveHandedConnections`.
 *
 * node:cluster's own hand-off (round-robin) keeps no account of a connection sent to a worker
 * that dies before taking it: the primary holds the socket open and nobody ever answers, so its
 * client hangs until a timeout of its own (a long-poll's, 40 s). Here the primary keeps every
 * socket it handed until the worker says it took it; when a worker exits, those it never took are
 * closed, and their clients, seeing the connection end, reconnect at once to a live worker.
 *
 * Nor does it know a worker that is alive but stuck (a loop that never yields, a long pause): it
 * keeps getting its share, and those clients hang. Here each worker is asked every `probeMs` to
 * answer; one not heard from for `stuckMs` gets no new connections while another is heard from.
 * What it was already handed waits for it (taken elsewhere, a connection would be served twice
 * once it woke).
 *
 * Messages on a worker's IPC line (beside the broker's, which use other kinds):
 *   primary → worker  {k: "connection", id} with the socket   serve this connection
 *   worker → primary  {k: "took", id}                          taken (or the socket did not arrive)
 *   worker → primary  {k: "ready"}                             connections may be handed now
 *   primary → worker  {k: "ping"}                              answer, if you can
 *   worker → primary  {k: "pong"}                              the answer
 */
import type { Worker } from 'node:cluster';
import type { Socket } from 'node:net';

export type HandoffMessage = { k: 'connection'; id: number } | { k: 'took'; id: number } | { k: 'ready' } | { k: 'ping' } | { k: 'pong' };

/** Whether an IPC message belongs to the hand-off (and not to the broker). */
export function isHandoffMessage(message: unknown): message is HandoffMessage {
  const k = (message as { k?: unknown } | null)?.k;
  return k === 'connection' || k === 'took' || k === 'ready' || k === 'ping' || k === 'pong';
}

function ignoreError(): void {}

/** Connections kept while no worker is ready (all of them restarting), and for how long, ms. */
export const MAX_WAITING = 1_000;
export const WAIT_MS = 10_000;
/** How often each worker is asked to answer, and how long one may not be heard from before it gets no new connections, ms. */
export const PROBE_MS = 500;
export const STUCK_MS = 2_000;

const PING: HandoffMessage = { k: 'ping' };

/** The primary's side: the workers ready for connections, and what each was handed and has not taken. */
export class ConnectionHandoff {
  private readonly ready: Worker[] = [];
  private readonly handed = new Map<Worker, Map<number, Socket>>();
  /** When each ready worker was last heard from (any hand-off message), ms since the epoch. */
  private readonly heard = new Map<Worker, number>();
  /** The ready workers not heard from for `stuckMs`, as last reported. */
  private readonly stuck = new Set<Worker>();
  private probe: NodeJS.Timeout | undefined;
  /** Connections accepted while no worker was ready, in order, with the time they came. */
  private waiting: { socket: Socket; since: number }[] = [];
  private waitCheck: NodeJS.Timeout | undefined;
  private next = 0;
  private lastId = 0;
  private readonly maxWaiting: number;
  private readonly waitMs: number;
  private readonly probeMs: number;
  private readonly stuckMs: number;
  private readonly onStuck: (worker: Worker, stuck: boolean) => void;

  constructor({
    maxWaiting = MAX_WAITING,
    waitMs = WAIT_MS,
    probeMs = PROBE_MS,
    stuckMs = STUCK_MS,
    onStuck = () => {},
  }: {
    maxWaiting?: number;
    waitMs?: number;
    probeMs?: number;
    stuckMs?: number;
    /** Told when a worker stops being heard from (`stuck`) and when it is heard again. */
    onStuck?: (worker: Worker, stuck: boolean) => void;
  } = {}) {
    this.maxWaiting = maxWaiting;
    this.waitMs = waitMs;
    this.probeMs = probeMs;
    this.stuckMs = stuckMs;
    this.onStuck = onStuck;
  }

  /** Workers that take connections now. */
  get readyCount(): number {
    return this.ready.length;
  }

  /** Reads the hand-off messages of `worker`; returns true for those it consumed. */
  receive(worker: Worker, message: unknown): boolean {
    if (!isHandoffMessage(message)) return false;
    if (this.handed.has(worker)) this.heardFrom(worker);
    if (message.k === 'ready') {
      if (!this.handed.has(worker) && worker.isConnected()) {
        this.handed.set(worker, new Map());
        this.ready.push(worker);
        this.heard.set(worker, Date.now());
        this.probe ??= setInterval(() => this.ask(), this.probeMs).unref();
        this.handWaiting();
      }
    } else if (message.k === 'took') {
      const sockets = this.handed.get(worker);
      const socket = sockets?.get(message.id);
      sockets?.delete(message.id);
      // The worker holds its own descriptor of the connection: closing this one ends nothing.
      socket?.destroy();
    }
    return true;
  }

  /** `worker` exited: the connections it was sent and never took are closed (their clients reconnect). */
  remove(worker: Worker): void {
    const index = this.ready.indexOf(worker);
    if (index !== -1) this.ready.splice(index, 1);
    for (const socket of this.handed.get(worker)?.values() ?? []) socket.destroy();
    this.handed.delete(worker);
    this.heard.delete(worker);
    this.stuck.delete(worker);
  }

  /** Workers not heard from for `stuckMs`, which get no new connections while another is heard from. */
  get stuckCount(): number {
    return this.stuck.size;
  }

  private heardFrom(worker: Worker): void {
    this.heard.set(worker, Date.now());
    if (this.stuck.delete(worker)) this.onStuck(worker, false);
  }

  /** Asks every ready worker to answer, and notes those not heard from for `stuckMs`. */
  private ask(): void {
    const now = Date.now();
    for (const worker of this.ready) {
      if (!this.stuck.has(worker) && now - (this.heard.get(worker) ?? now) >= this.stuckMs) {
        this.stuck.add(worker);
        this.onStuck(worker, true);
      }
      if (worker.isConnected()) worker.send(PING, ignoreError);
    }
  }

  /** The next ready worker in turn that is heard from; when none is, the next in turn. */
  private nextWorker(): Worker {
    const count = this.ready.length;
    for (let tried = 0; tried < count; tried++) {
      const worker = this.ready[this.next++ % count]!;
      if (!this.stuck.has(worker)) return worker;
    }
    return this.ready[this.next++ % count]!;
  }

  /**
   * Hands an accepted connection (not yet read from) to the next ready worker. With none ready
   * (every worker is starting), it waits for one, at most `waitMs` and behind at most `maxWaiting`
   * others; past either it is closed, and its client tries again.
   */
  hand(socket: Socket): void {
    // This process only holds the connection: an error on it (a reset while it waits) ends it
    // and must not end the primary, and every worker with it.
    if (socket.listenerCount('error') === 0) socket.on('error', ignoreError);
    if (this.ready.length === 0) {
      if (this.waiting.length >= this.maxWaiting) socket.destroy();
      else this.wait(socket);
      return;
    }
    const worker = this.nextWorker();
    const sockets = this.handed.get(worker)!;
    const id = ++this.lastId;
    sockets.set(id, socket);
    const message: HandoffMessage = { k: 'connection', id };
    // keepOpen: this process keeps its descriptor until the worker says it took the connection.
    worker.send(message, socket, { keepOpen: true }, (error) => {
      if (!error) return;
      // The worker's line closed before the socket went out (it is dying; its exit follows):
      // another worker gets the connection, and this one no more.
      sockets.delete(id);
      const index = this.ready.indexOf(worker);
      if (index !== -1) this.ready.splice(index, 1);
      this.hand(socket);
    });
  }

  /** Closes every connection waiting for a worker (the server stops). */
  close(): void {
    clearInterval(this.probe);
    this.probe = undefined;
    for (const { socket } of this.takeWaiting()) socket.destroy();
  }

  private wait(socket: Socket): void {
    this.waiting.push({ socket, since: Date.now() });
    socket.once('close', () => (this.waiting = this.waiting.filter((entry) => entry.socket !== socket)));
    this.waitCheck ??= setInterval(() => {
      const now = Date.now();
      for (const { socket, since } of this.waiting) if (now - since >= this.waitMs) socket.destroy();
      if (this.waiting.length === 0) this.takeWaiting();
    }, Math.min(1_000, this.waitMs));
  }

  private handWaiting(): void {
    for (const { socket } of this.takeWaiting()) if (!socket.destroyed) this.hand(socket);
  }

  private takeWaiting(): { socket: Socket; since: number }[] {
    const waiting = this.waiting;
    this.waiting = [];
    clearInterval(this.waitCheck);
    this.waitCheck = undefined;
    return waiting;
  }
}

/**
 * The worker's side: every connection the primary hands over goes to `take`, then is acknowledged;
 * the primary is told that this worker is ready.
 */
export function takeHandedConnections(take: (socket: Socket) => void): void {
  const pong: HandoffMessage = { k: 'pong' };
  process.on('message', (message: unknown, socket?: Socket) => {
    if (!isHandoffMessage(message)) return;
    if (message.k === 'ping') {
      process.send?.(pong);
      return;
    }
    if (message.k !== 'connection') return;
    if (socket) take(socket);
    const took: HandoffMessage = { k: 'took', id: message.id };
    process.send?.(took);
  });
  const ready: HandoffMessage = { k: 'ready' };
  process.send?.(ready);
}
