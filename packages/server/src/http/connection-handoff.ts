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
 * Messages on a worker's IPC line (beside the broker's, which use other kinds):
 *   primary → worker  {k: "connection", id} with the socket   serve this connection
 *   worker → primary  {k: "took", id}                          taken (or the socket did not arrive)
 *   worker → primary  {k: "ready"}                             connections may be handed now
 */
import type { Worker } from 'node:cluster';
import type { Socket } from 'node:net';

export type HandoffMessage = { k: 'connection'; id: number } | { k: 'took'; id: number } | { k: 'ready' };

/** Whether an IPC message belongs to the hand-off (and not to the broker). */
export function isHandoffMessage(message: unknown): message is HandoffMessage {
  const k = (message as { k?: unknown } | null)?.k;
  return k === 'connection' || k === 'took' || k === 'ready';
}

function ignoreError(): void {}

/** Connections kept while no worker is ready (all of them restarting), and for how long, ms. */
export const MAX_WAITING = 1_000;
export const WAIT_MS = 10_000;

/** The primary's side: the workers ready for connections, and what each was handed and has not taken. */
export class ConnectionHandoff {
  private readonly ready: Worker[] = [];
  private readonly handed = new Map<Worker, Map<number, Socket>>();
  /** Connections accepted while no worker was ready, in order, with the time they came. */
  private waiting: { socket: Socket; since: number }[] = [];
  private waitCheck: NodeJS.Timeout | undefined;
  private next = 0;
  private lastId = 0;
  private readonly maxWaiting: number;
  private readonly waitMs: number;

  constructor({ maxWaiting = MAX_WAITING, waitMs = WAIT_MS }: { maxWaiting?: number; waitMs?: number } = {}) {
    this.maxWaiting = maxWaiting;
    this.waitMs = waitMs;
  }

  /** Workers that take connections now. */
  get readyCount(): number {
    return this.ready.length;
  }

  /** Reads the hand-off messages of `worker`; returns true for those it consumed. */
  receive(worker: Worker, message: unknown): boolean {
    if (!isHandoffMessage(message)) return false;
    if (message.k === 'ready') {
      if (!this.handed.has(worker) && worker.isConnected()) {
        this.handed.set(worker, new Map());
        this.ready.push(worker);
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
    const worker = this.ready[this.next++ % this.ready.length]!;
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
  process.on('message', (message: unknown, socket?: Socket) => {
    if (!isHandoffMessage(message) || message.k !== 'connection') return;
    if (socket) take(socket);
    const took: HandoffMessage = { k: 'took', id: message.id };
    process.send?.(took);
  });
  const ready: HandoffMessage = { k: 'ready' };
  process.send?.(ready);
}
