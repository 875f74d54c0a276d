/**
 * The ids of a session's latest publishes, to recognise a resend. Faye resends a message with the
 * same id when its reply is late (BAYEUX.md pitfall 3), and reconnecting clients resend what was
 * not acknowledged: at-least-once on the wire, once to subscribers.
 */
export class RecentIds {
  private readonly ring: Array<string | undefined>;
  private readonly known = new Set<string>();
  private next = 0;

  constructor(readonly size: number) {
    this.ring = new Array<string | undefined>(size);
  }

  has(id: string): boolean {
    return this.known.has(id);
  }

  /** Remembers `id`, forgetting the oldest once `size` are remembered. */
  add(id: string): void {
    if (this.known.has(id)) return;
    const old = this.ring[this.next];
    if (old !== undefined) this.known.delete(old);
    this.ring[this.next] = id;
    this.known.add(id);
    this.next = (this.next + 1) % this.size;
  }

  /** Forgets `id` (its publish was refused, so a resend deserves a fresh hearing). */
  delete(id: string): void {
    if (!this.known.delete(id)) return;
    const at = this.ring.indexOf(id);
    if (at !== -1) this.ring[at] = undefined;
  }
}
