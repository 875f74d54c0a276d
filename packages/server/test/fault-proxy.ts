/**
 * A TCP proxy on loopback that misbehaves the way networks do, at random or on demand: it delays
 * chunks (order kept), truncates a connection (forwards part of a chunk, then cuts it), resets it
 * (RST both ways) and blackholes it (nothing forwarded any more, nothing closed, until it is
 * finally dropped `blackholeMs` later, as a NAT that forgot the flow). Adapted from the TcpProxy of
 * packages/client/test/helpers.ts, for the third-party clients of the server tests.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export type Fault = 'delay' | 'truncate' | 'reset' | 'blackhole';

interface Link {
  client: Socket;
  upstream: Socket;
  /** The name the client gave its connection (a Redis client's CLIENT SETNAME), '' until it does. */
  name: string;
  /** Extra delay of each chunk, ms (0: none). */
  delayMs: number;
  dead: boolean;
}

/**
 * One direction of a link. Delayed chunks wait in a chain, each until its own delay after it came
 * has passed (a latency, not added up: a burst on a delayed line arrives late, not spread over a
 * minute); while any is waiting, later chunks join the chain even after the delay is over, so that
 * no chunk overtakes another: TCP never reorders, and a proxy that did would fault the clients with
 * something no network does.
 */
interface Direction {
  tail: Promise<void>;
  waiting: number;
}

export class FaultProxy {
  readonly counts: Record<Fault, number> = { delay: 0, truncate: 0, reset: 0, blackhole: 0 };
  /** Connections accepted so far. */
  opened = 0;
  /**
   * How long to hold a chunk on its way to the upstream server, ms (0: not held), given the name
   * its connection gave itself; later chunks of its link wait behind it, each sent no sooner than
   * its own hold says.
   */
  holdUpstream: ((chunk: Buffer, name: string) => number) | null = null;
  /** The same for a chunk on its way back to the client. */
  holdDownstream: ((chunk: Buffer, name: string) => number) | null = null;
  private readonly links = new Set<Link>();
  private readonly blackholed = new Set<Socket>();
  /** Truncations waiting for their chunk to cut. */
  private pendingCuts = 0;
  /** Chunks held back by a delay, over every link. */
  private delayedChunks = 0;
  private chaos: NodeJS.Timeout | null = null;

  private constructor(
    private readonly server: Server,
    private readonly blackholeMs: number,
  ) {}

  static async start(targetPort: number, { blackholeMs = 6000 } = {}): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, blackholeMs);
    server.on('connection', (client) => proxy.accept(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Connections forwarding now. */
  get size(): number {
    return this.links.size;
  }

  private accept(client: Socket, targetPort: number): void {
    this.opened++;
    const upstream = connect(targetPort, '127.0.0.1');
    const link: Link = { client, upstream, name: '', delayMs: 0, dead: false };
    this.links.add(link);
    const forward = (from: Socket, to: Socket, hold: (chunk: Buffer) => number): void => {
      const direction: Direction = { tail: Promise.resolve(), waiting: 0 };
      from.on('data', (chunk: Buffer) => {
        if (link.dead) return;
        if (from === client && !link.name) link.name = /setname\r\n\$\d+\r\n([^\r]*)\r\n/i.exec(chunk.toString('latin1'))?.[1] ?? '';
        const ms = link.delayMs || hold(chunk);
        if (ms === 0 && direction.waiting === 0) {
          to.write(chunk);
          return;
        }
        direction.waiting++;
        this.delayedChunks++;
        // A latency: each chunk goes no sooner than `ms` after it came, and after the one before.
        const due = Date.now() + ms;
        direction.tail = direction.tail
          .then(() => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, due - Date.now()))))
          .then(() => {
            direction.waiting--;
            this.delayedChunks--;
            if (!link.dead) to.write(chunk);
          });
      });
    };
    forward(client, upstream, (chunk) => this.holdUpstream?.(chunk, link.name) ?? 0);
    forward(upstream, client, (chunk) => this.holdDownstream?.(chunk, link.name) ?? 0);
    const done = (): void => {
      if (!this.links.delete(link)) return;
      link.dead = true;
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on('error', done);
      socket.on('close', done);
    }
  }

  /**
   * Applies `fault` to one connection picked at random (of those whose name `named` takes);
   * returns whether there was one.
   */
  inflict(fault: Fault, random: () => number = Math.random, named: (name: string) => boolean = () => true): boolean {
    const links = [...this.links].filter((link) => named(link.name));
    if (links.length === 0) return false;
    const link = links[Math.floor(random() * links.length)]!;
    this.counts[fault]++;
    switch (fault) {
      case 'delay':
        link.delayMs = 50 + Math.floor(random() * 400);
        setTimeout(() => (link.delayMs = 0), 500 + random() * 1500).unref();
        break;
      case 'truncate': {
        // The next chunk from the server gets through in part, then the line is cut with a FIN.
        this.links.delete(link);
        this.pendingCuts++;
        const cut = (chunk: Buffer): void => {
          this.pendingCuts--;
          link.dead = true;
          link.client.write(chunk.subarray(0, Math.max(1, Math.floor(chunk.length / 2))));
          link.client.end();
          link.upstream.destroy();
        };
        link.upstream.prependOnceListener('data', cut);
        // A line with nothing to say within a second is cut all the same.
        setTimeout(() => {
          if (link.dead) return;
          this.pendingCuts--;
          link.upstream.off('data', cut);
          link.dead = true;
          link.client.end();
          link.upstream.destroy();
        }, 1000).unref();
        break;
      }
      case 'reset':
        this.links.delete(link);
        link.dead = true;
        link.client.resetAndDestroy();
        link.upstream.resetAndDestroy();
        break;
      case 'blackhole':
        this.links.delete(link);
        link.dead = true;
        for (const socket of [link.client, link.upstream]) {
          socket.pause();
          this.blackholed.add(socket);
        }
        setTimeout(() => {
          for (const socket of [link.client, link.upstream]) {
            socket.destroy();
            this.blackholed.delete(socket);
          }
        }, this.blackholeMs).unref();
        break;
    }
    return true;
  }

  /** Every `minMs`–`maxMs`, one random fault on one random connection, with `weights`. */
  startChaos(weights: Record<Fault, number>, minMs: number, maxMs: number, random: () => number = Math.random): void {
    const entries = Object.entries(weights) as [Fault, number][];
    const total = entries.reduce((n, [, w]) => n + w, 0);
    const next = (): void => {
      this.chaos = setTimeout(
        () => {
          let r = random() * total;
          const fault = entries.find(([, w]) => (r -= w) < 0)?.[0] ?? entries[0]![0];
          this.inflict(fault, random);
          next();
        },
        minMs + random() * (maxMs - minMs),
      );
    };
    next();
  }

  /**
   * Whether every fault inflicted so far is over: no blackholed connection still silent, no
   * truncation waiting for its chunk, no delayed chunk held back, no delay still on. A message
   * published before that may still go into a line that is about to fail.
   */
  get settled(): boolean {
    return this.blackholed.size === 0 && this.pendingCuts === 0 && this.delayedChunks === 0 && [...this.links].every((link) => link.delayMs === 0);
  }

  stopChaos(): void {
    if (this.chaos) clearTimeout(this.chaos);
    this.chaos = null;
  }

  async close(): Promise<void> {
    this.stopChaos();
    for (const { client, upstream } of this.links) client.destroy(), upstream.destroy();
    for (const socket of this.blackholed) socket.destroy();
    this.links.clear();
    this.blackholed.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A small deterministic generator (mulberry32), so that a failing run can be replayed from its seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
