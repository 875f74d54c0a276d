import type { PublishOnce } from './engine.js';

/**
 * The ids of a session's latest publishes, to recognise a resend. Faye resends a message with the
 * same id when its reply is late (BAYEUX.md pitfall 3), and reconnecting clients resend what was
 * not acknowledged: at-least-once on the wire, once to subscribers.
 */
export class RecentIds {
  private readonly ring: Array<string | undefined>;
  private readonly known = new Set<string>();
  private next = 0;
  /** The publishes of these ids still on their way (waiting for Redis, a hook): settled, whatever came of them. */
  private pending: Map<string, Promise<void>> | null = null;

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

  /**
   * The publish of `id` is on its way: a resend that comes meanwhile waits for its outcome (it
   * may yet fail, and then the resend is what publishes) rather than be acknowledged at once.
   */
  underway(id: string, publish: Promise<unknown>): void {
    const settled = publish.then(
      () => {},
      () => {},
    );
    (this.pending ??= new Map()).set(id, settled);
    void settled.then(() => {
      if (this.pending?.get(id) === settled) this.pending.delete(id);
    });
  }

  /** The outcome of the publish of `id`, while it is on its way; else undefined. */
  whenSettled(id: string): Promise<void> | undefined {
    return this.pending?.get(id);
  }

  /** Forgets `id` (its publish was refused, so a resend deserves a fresh hearing). */
  delete(id: string): void {
    if (!this.known.delete(id)) return;
    const at = this.ring.indexOf(id);
    if (at !== -1) this.ring[at] = undefined;
  }
}

/** How long the publish ids of a client's ended session wait for its next session, ms. */
export const RESUME_WINDOW_MS = 60_000;
/** Clients whose publish ids are kept beyond their sessions at most (the most recent first). */
export const MAX_RESUMING_CLIENTS = 1000;

/**
 * Publish ids per client instance (the handshake's `ext.instance`, with the user it speaks for),
 * shared by its sessions on this node: a client that starts a new session (its old one was swept
 * while a line was down) resends with the same ids what was never acknowledged, and what the old
 * session had published is recognised. An ended session's ids are kept `windowMs` for the next,
 * for at most `maxClients` clients. The workers' broker keeps its workers' clients here too.
 */
export class PublishIdsByClient {
  /** In the order they were last touched: the oldest first. */
  private readonly entries = new Map<string, { ids: RecentIds; until: number }>();

  constructor(
    private readonly size: number,
    private readonly maxClients = MAX_RESUMING_CLIENTS,
    private readonly windowMs = RESUME_WINDOW_MS,
  ) {}

  /** The ids of `client`'s sessions: those kept, or new ones. */
  of(client: string, now = Date.now()): RecentIds {
    const kept = this.entries.get(client);
    return this.keep(client, kept && kept.until > now ? kept.ids : new RecentIds(this.size), now);
  }

  /** False when `id` is among `client`'s latest ids (a resend); else true, and it is kept. */
  firstTime(client: string, id: string, now = Date.now()): boolean {
    const ids = this.of(client, now);
    if (ids.has(id)) return false;
    ids.add(id);
    return true;
  }

  /** A session of `client` ended: its ids wait for the next one. */
  ended(client: string, ids: RecentIds, now = Date.now()): void {
    this.keep(client, ids, now);
  }

  private keep(client: string, ids: RecentIds, now: number): RecentIds {
    this.entries.delete(client);
    this.entries.set(client, { ids, until: now + this.windowMs });
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.maxClients && entry.until > now) break;
      this.entries.delete(key);
    }
    return ids;
  }
}

/**
 * The ids of PublishOnce as an engine keeps them, for publishers that may send through any of
 * its servers: per publisher at most `keep` ids, each for `forMs` ms, for at most `maxPublishers`
 * publishers (those that published last). The workers' primary keeps its workers' here, and the
 * memory engine the idempotency keys of publishes and deliveries (a client's are kept by the
 * server, see PublishIdsByClient).
 */
export class OnceIds {
  /** Each publisher's ids with when they were kept (the oldest first); the publishers in the order they last published. */
  private readonly publishers = new Map<string, Map<string, number>>();

  constructor(private readonly maxPublishers: number) {}

  /** False when `id` is among `client`'s ids kept (a resend); else true, and it is kept. */
  firstTime({ client, id, keep, forMs }: PublishOnce, now = Date.now()): boolean {
    let ids = this.publishers.get(client);
    if (ids) this.publishers.delete(client);
    else ids = new Map();
    this.publishers.set(client, ids);
    if (this.publishers.size > this.maxPublishers) this.publishers.delete(this.publishers.keys().next().value!);
    // Kept in the order they came: those past their time are at the front.
    for (const [old, at] of ids) {
      if (at > now - forMs) break;
      ids.delete(old);
    }
    if (ids.has(id)) return false;
    for (const old of ids.keys()) {
      if (ids.size < keep) break;
      ids.delete(old);
    }
    ids.set(id, now);
    return true;
  }

  /** Forgets an id `firstTime` kept: what it named could not be done, so a repeat deserves a try. */
  forget({ client, id }: PublishOnce): void {
    this.publishers.get(client)?.delete(id);
  }
}
