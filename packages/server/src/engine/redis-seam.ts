/**
 * The seam of a recovery on the Redis engine: exact, although Redis answers asynchronously.
 *
 * While a subscribe's history read is in flight, the session's live messages on each channel it
 * recovers (or subscribes to with positions) are held. The read script publishes a fence on the
 * bus of the partition it read (the bus those channels' messages travel on) after reading;
 * messages that reach the node before the fence were published before the read (they are in the
 * replay, or before the subscribe's position), messages after it were published after. Every node
 * hears the fence; its id, unique in the cluster, tells the node that waits for it. Once both the reply and the fence are in, the replay is queued, then the held
 * messages past the position the read reached.
 */
import type { Position } from '@perihelion/protocol';
import type { EngineHost, Publication } from './engine.js';
import { unavailable } from './redis-connection.js';

/** Live messages of one session on one channel, held while its subscribe's read is in flight. */
export interface Hold {
  clientId: string;
  channel: string;
  held: Publication[];
}

export class RecoverySeam {
  /** channel → clientId → hold. */
  private readonly holds = new Map<string, Map<string, Hold>>();
  /** Fences on their way through Redis, by id. */
  private readonly fences = new Map<string, () => void>();
  private lastFence = 0;

  constructor(
    /** This node's id: the first part of its fences' ids. */
    private readonly nodeId: string,
    /** Longest wait for a fence, ms. */
    private readonly timeout: number,
    private readonly report: (error: unknown) => void,
  ) {}

  /** Starts holding `clientId`'s live messages on each of `channels` (once per channel). */
  hold(clientId: string, channels: Iterable<string>): Hold[] {
    const holds: Hold[] = [];
    for (const channel of channels) {
      if (holds.some((hold) => hold.channel === channel)) continue;
      const hold: Hold = { clientId, channel, held: [] };
      let byClient = this.holds.get(channel);
      if (!byClient) this.holds.set(channel, (byClient = new Map()));
      byClient.set(clientId, hold);
      holds.push(hold);
    }
    return holds;
  }

  /**
   * Which of `clientIds` get a live publication on `channel` now: the others are held, and keep it until their
   * read is done. Returns `clientIds` itself when nobody is held on the channel (the common case).
   */
  route(channel: string, publication: Publication, clientIds: Iterable<string>): Iterable<string> {
    const holds = this.holds.get(channel);
    if (!holds) return clientIds;
    const free = new Set<string>();
    for (const id of clientIds) {
      const hold = holds.get(id);
      if (hold) hold.held.push(publication);
      else free.add(id);
    }
    return free;
  }

  /**
   * A fence for a read, if `needed` (something is held): its id, to send through Redis after the
   * read ('' when not needed), and a promise resolved when it comes back or after the timeout
   * (reported).
   */
  fence(needed: boolean): { id: string; back: Promise<void> } {
    if (!needed) return { id: '', back: Promise.resolve() };
    const id = `${this.nodeId}.${++this.lastFence}`;
    const back = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        if (!this.fences.delete(id)) return;
        this.report(unavailable(`a subscribe's fence did not come back through Redis within ${this.timeout} ms`));
        resolve();
      }, this.timeout);
      this.fences.set(id, () => {
        this.fences.delete(id);
        clearTimeout(timer);
        resolve();
      });
    });
    return { id, back };
  }

  /** A fence came back through Redis (another node's is unknown here, and ignored). */
  onFence(id: string): void {
    this.fences.get(id)?.();
  }

  /** The bus subscription is lost: no fence sent will come back, and nobody waits for one any more (not reported: the loss is). */
  fencesLost(): void {
    for (const resolve of [...this.fences.values()]) resolve();
  }

  /** The read failed: its fence will not come back. */
  forget(id: string): void {
    this.fences.delete(id);
  }

  /** Ends holds: their messages past the position the read reached (by channel) are delivered, in order. */
  release(host: EngineHost, holds: readonly Hold[], reached: ReadonlyMap<string, Position>): void {
    for (const hold of holds) {
      const byClient = this.holds.get(hold.channel);
      byClient?.delete(hold.clientId);
      if (byClient?.size === 0) this.holds.delete(hold.channel);
      const floor = reached.get(hold.channel);
      for (const publication of hold.held) {
        const at = publication.position;
        if (at && floor && at.epoch === floor.epoch && at.offset <= floor.offset) continue;
        host.onDirect(publication, hold.clientId);
      }
    }
  }

  /** The engine is closing: nobody waits for a fence any more. */
  close(): void {
    for (const resolve of this.fences.values()) resolve();
  }
}
