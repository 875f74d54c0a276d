/**
 * Which node holds a session, as lately looked up: a node behind a balancer without affinity
 * forwards most of a client's requests to the same other node, and asking the engine each time
 * costs a Redis round trip per request.
 *
 * A session never moves: the node that made it holds it until it ends. So an owner once looked up
 * stays right for as long as the session lives; when it died, or the session ended, the owner's
 * silence (or its 402) says so, and the entry is forgotten (`forget`). Entries also lapse after
 * `ttlMs`, and past `max` the oldest go first: the map stays bounded whatever the clients send
 * (a clientId the engine does not know is never kept).
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
