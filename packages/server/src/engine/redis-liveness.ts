/**
 * Which nodes of the cluster are alive. Each node writes the time into `<control prefix>nodes` every
 * `heartbeatInterval` (Redis's clock, so that the nodes' clocks need not agree) and, in the same
 * script, learns which nodes have been silent for longer than `nodeTimeout`: it removes their
 * sessions and subscriptions, so that presence and `sendTo` stop naming sessions nobody holds.
 *
 * A node that finds itself unregistered (Redis restarted, or the others took it for dead while it
 * was cut off) records its sessions and subscriptions, and claims its state channels, again.
 */
import type { LostSession } from './engine.js';
import { unavailable, type RedisConnection } from './redis-connection.js';

/** Sessions removed per script call when a node is cleaned up (keeps each call short). */
const CLEANUP_BATCH = 500;
/** Arguments per REGISTER call, about (a session's patterns are never split across calls). */
const REGISTER_BATCH = 2000;

/** A session of this node as Redis should know it. */
export interface Registration {
  clientId: string;
  user: string | null;
  patterns: Iterable<string>;
}

export class NodeLiveness {
  private timer: NodeJS.Timeout | null = null;
  /**
   * Whether Redis holds this node's sessions. Cleared when a heartbeat finds the node unknown, set
   * once they are all recorded again: a registration cut short (Redis or a shard going away again
   * in the middle) is taken up by the next heartbeat, although that one finds the node known.
   */
  private registered = true;
  /** A change of this node's sessions may be missing in Redis: the next beat records them afresh. */
  private stale = false;

  constructor(
    private readonly connection: RedisConnection,
    /** The control plane's prefix (redis-layout.ts). */
    private readonly control: string,
    private readonly nodeId: string,
    private readonly options: { heartbeatInterval: number; nodeTimeout: number },
    /** This node's live sessions, to record again when Redis has forgotten them. */
    private readonly registrations: () => Iterable<Registration>,
    /** The sessions of a dead node that this node removed. */
    private readonly sessionsLost: (sessions: LostSession[]) => void,
    /** This node's sessions, removed by another node that took it for dead, are registered again. */
    private readonly restored: () => void,
    /** The state channels this node holds, to claim again when Redis has forgotten them (a restart). */
    private readonly stateClaims: () => Iterable<string> = () => [],
    /** A state channel of this node that another node claimed meanwhile. */
    private readonly stateLost: (channel: string, holder: string) => void = () => {},
  ) {}

  /** Beats every `heartbeatInterval` until `stop`; a failed beat is a lost connection. */
  start(): void {
    this.timer = setInterval(() => void this.beat().catch((error: unknown) => this.connection.lost(error)), this.options.heartbeatInterval);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Says this node is alive, registers it again if it was forgotten, removes dead nodes. */
  async beat(): Promise<void> {
    // Asked even while Redis is taken for away (hung): the beat that goes through ends the outage.
    if (!this.connection.connectedCmd()) return;
    if (this.stale) {
      this.stale = false;
      try {
        // Everything Redis holds of this node goes; the heartbeat then finds it unregistered.
        await this.removeNode(this.nodeId, -1);
      } catch (error) {
        this.stale = true;
        throw error;
      }
    }
    const [fresh, removed, ...dead] = (await this.connection.script('HEARTBEAT', this.control, [this.nodeId, this.options.nodeTimeout])) as [number, number, ...string[]];
    if (Number(fresh) === 1) this.registered = false;
    if (!this.registered) {
      await this.register();
      this.registered = true;
      // Another node took this one for dead (it was paused past the node timeout) and ended its
      // sessions for the others (presence leaves): they are said again.
      if (Number(removed) === 1) this.restored();
    }
    for (const node of dead) await this.removeNode(node, this.options.nodeTimeout);
    this.connection.healthy();
  }

  /** A write of this node's sessions failed: they are recorded afresh at the next beat. */
  resync(): void {
    this.stale = true;
  }

  /** The connection is back: whatever Redis still holds about this node may be stale, so start afresh. */
  async rejoin(): Promise<void> {
    await this.removeNode(this.nodeId, -1);
    // The heartbeat finds this node unregistered and registers its sessions again.
    await this.beat();
  }

  /** This node leaves: its sessions and subscriptions go with it, at once. */
  leave(): Promise<void> {
    return this.removeNode(this.nodeId, -1);
  }

  /** Ids of the nodes that are alive now (heartbeat within `nodeTimeout`), this one included. */
  async nodes(): Promise<string[]> {
    const cmd = this.connection.readyCmd();
    if (!cmd) throw unavailable('cannot list the nodes');
    const [seconds, micros] = await cmd.time();
    const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    const all = await cmd.hgetall(`${this.control}nodes`);
    return Object.entries(all)
      .filter(([, seen]) => now - Number(seen) <= this.options.nodeTimeout)
      .map(([node]) => node);
  }

  /** Records every session of this node and its subscriptions, and its claims of state channels, in Redis again. */
  private async register(): Promise<void> {
    // A claim another node made meanwhile (it took this one for dead) stays theirs: the later
    // claim wins, and this node gives its copy up.
    for (const channel of [...this.stateClaims()]) {
      const holder = await this.connection.script('CLAIM_STATE', this.control, [this.nodeId, channel, this.options.nodeTimeout]);
      if (holder !== '') this.stateLost(channel, String(holder));
    }
    const args: Array<string | number> = [];
    const flush = async (): Promise<void> => {
      if (args.length > 0) await this.connection.script('REGISTER', this.control, [this.nodeId, ...args.splice(0)]);
    };
    for (const { clientId, user, patterns } of this.registrations()) {
      const list = [...patterns];
      args.push(clientId, user ?? '', list.length, ...list);
      if (args.length >= REGISTER_BATCH) await flush();
    }
    await flush();
  }

  /**
   * Removes a node's sessions, a batch per script call, then the node itself. `timeout` -1 removes
   * it even if it is alive (this node leaving or starting afresh); otherwise a node that beat
   * within `timeout` meanwhile is left alone.
   */
  private async removeNode(node: string, timeout: number): Promise<void> {
    for (;;) {
      const [left, ...dropped] = (await this.connection.script('REMOVE_NODE', this.control, [node, timeout, CLEANUP_BATCH])) as unknown[];
      // Another node's sessions, gone with it: what ends a session is this node's to do (its own
      // are ended by this node as it leaves or starts afresh, and were told so already).
      if (node !== this.nodeId && dropped.length > 0) this.sessionsLost(lostSessions(dropped));
      if (Number(left) <= 0) return;
    }
  }
}

/** The sessions REMOVE_NODE dropped: (clientId, user or '', count, patterns…) after one another. */
function lostSessions(flat: readonly unknown[]): LostSession[] {
  const sessions: LostSession[] = [];
  for (let i = 0; i + 2 < flat.length; ) {
    const count = Number(flat[i + 2]);
    sessions.push({ clientId: String(flat[i]), user: flat[i + 1] === '' ? null : String(flat[i + 1]), subscriptions: flat.slice(i + 3, i + 3 + count).map(String) });
    i += 3 + count;
  }
  return sessions;
}
