/**
 * Which node holds something another node serves, as lately looked up: a session whose requests
 * a node forwards (core/forwarding.ts), a state channel whose requests it relays
 * (state/state-service.ts). Asking the engine each time costs a Redis round trip per request.
 *
 * A session never moves: the node that made it holds it until it ends, so its owner stays right
 * for as long as it lives. A state channel moves only when its holder gives it up or dies. Either
 * way the owner's silence or its answer (a 402, a 503) says when an entry is wrong, and the caller
 * forgets it (`forget`). Entries also lapse after `ttlMs`, and past `max` the oldest go first:
 * the map stays bounded whatever the clients send (callers keep only what the engine named).
 */
export class KnownOwners {
  private readonly owners = new Map<string, { node: string; until: number }>();

  constructor(
    private readonly max: number,
    private readonly ttlMs: number,
  ) {}

  /** The node last looked up for `clientId`, while still trusted; undefined otherwise. */
  get(clientId: string, now = Date.now()): string | undefined {
    const known = this.owners.get(clientId);
    if (known === undefined) return undefined;
    if (known.until > now) return known.node;
    this.owners.delete(clientId);
    return undefined;
  }

  set(clientId: string, node: string, now = Date.now()): void {
    this.owners.delete(clientId);
    if (this.owners.size >= this.max) this.owners.delete(this.owners.keys().next().value!);
    this.owners.set(clientId, { node, until: now + this.ttlMs });
  }

  forget(clientId: string): void {
    this.owners.delete(clientId);
  }

  get size(): number {
    return this.owners.size;
  }
}
