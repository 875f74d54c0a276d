/**
 * Where the Redis engine's keys and pub/sub channels live, on one Redis or on a Redis Cluster.
 *
 * Two planes, so that publishes scale with the shards of a Redis Cluster:
 *
 * - The **control plane** (sessions, their owners and users, subscriptions and their counts, live
 *   nodes, presence marks) is in one hash slot: the scripts that change it touch several of its
 *   keys at once. It changes at handshakes, subscribes and disconnects, not per message.
 * - The **data plane** (each channel's position and history, and the bus that carries its
 *   messages to every node) is split into `partitions`. A channel belongs to one partition, by the
 *   CRC16 of its name; a partition's keys and its bus share one hash slot, so the publish script
 *   gives a position, appends to the history and publishes (SPUBLISH, sharded pub/sub) on the shard
 *   that holds the partition, in one atomic step. Every node subscribes to every partition's bus.
 *   Each channel keeps one order; channels of different partitions are not ordered together (no
 *   Bayeux client is promised that).
 *
 * On one Redis (standalone, Sentinel) the names carry no hash tags and there is one partition by
 * default, so the layout is the one earlier versions used:
 *
 *   P owner, P subs:<pattern>, …   control keys (the key list is in redis-scripts.ts)
 *   P ch:<channel>, P log:<channel>, P chans, P lru   data keys of the only partition
 *   P bus                          every broadcast, and census questions
 *   P node:<id>                    what is meant for one node (a pub/sub channel)
 *   P node:<id>:mail:<n>           a large message for that node, until it takes it
 *
 * On a Redis Cluster (or with `partitions` > 1) each plane's prefix carries a hash tag:
 *
 *   P{c}owner, P{c}subs:<pattern>, …, P{c}bus       control keys, and census questions
 *   P{<tag k>}ch:<channel>, P{<tag k>}log:<channel>, P{<tag k>}chans, P{<tag k>}lru, P{<tag k>}bus
 *   P{node:<id>}                   what is meant for one node (on whichever shard holds that slot)
 *   P{node:<id>}:mail:<n>          a large message for that node, in the same slot
 *
 * A partition's tag is the shortest string found whose slot falls in the partition's even share
 * of the 16 384 slots, so that partitions spread evenly over any even split of slots into shards.
 */

/** Hash slots of a Redis Cluster. */
export const SLOTS = 16384;

export class RedisLayout {
  /** Prefix of every control-plane key (it ends with the control hash tag on a cluster). */
  readonly control: string;
  /** Channel of census questions, heard by every node. */
  readonly controlBus: string;
  /** Prefix of each partition's keys, by partition. */
  private readonly dataPrefixes: string[];

  constructor(
    readonly prefix: string,
    /** Whether Redis is a Redis Cluster (sharded pub/sub: SPUBLISH, SSUBSCRIBE). */
    readonly cluster: boolean,
    readonly partitions: number,
  ) {
    const tagged = cluster || partitions > 1;
    this.control = tagged ? `${prefix}{c}` : prefix;
    this.controlBus = `${this.control}bus`;
    this.dataPrefixes = tagged ? partitionTags(partitions).map((tag) => `${prefix}{${tag}}`) : [prefix];
  }

  /**
   * On one Redis, where the control keys of a cluster with the other kind of layout would be (one
   * partition: untagged; more: tagged); null on a Redis Cluster, where they are always tagged.
   */
  otherControl(): string | null {
    if (this.cluster) return null;
    return this.partitions > 1 ? this.prefix : `${this.prefix}{c}`;
  }

  /** The partition that holds `channel`. */
  partitionOf(channel: string): number {
    if (this.partitions === 1) return 0;
    return Math.floor((crc16(channel) % SLOTS) * this.partitions / SLOTS);
  }

  /** Prefix of partition `k`'s keys (`ch:<channel>`, `log:<channel>`, `chans`, `lru`). */
  data(k: number): string {
    return this.dataPrefixes[k]!;
  }

  /** The bus of partition `k`: its channels' broadcasts and the fences of reads made there. */
  bus(k: number): string {
    return `${this.dataPrefixes[k]!}bus`;
  }

  /** The pub/sub channel of one node. */
  node(id: string): string {
    return this.cluster || this.partitions > 1 ? `${this.prefix}{node:${id}}` : `${this.prefix}node:${id}`;
  }

  /**
   * Where the large messages for one node wait for it to take them (redis-node-mail.ts): keys
   * under this prefix, in its pub/sub channel's hash slot on a cluster.
   */
  nodeMail(id: string): string {
    return `${this.node(id)}:mail:`;
  }

  /** Every channel this node must hear: each partition's bus, the control bus, its own. */
  channelsFor(nodeId: string): string[] {
    const channels = new Set(this.dataPrefixes.map((_, k) => this.bus(k)));
    channels.add(this.controlBus);
    channels.add(this.node(nodeId));
    return [...channels];
  }

  /** The command that publishes on the bus: sharded on a cluster, so that each shard carries its own. */
  get publishCommand(): 'PUBLISH' | 'SPUBLISH' {
    return this.cluster ? 'SPUBLISH' : 'PUBLISH';
  }
}

/** One tag per partition, each hashing into its even share of the slots. */
function partitionTags(partitions: number): string[] {
  const tags: string[] = [];
  for (let k = 0; k < partitions; k++) {
    const low = Math.ceil((k * SLOTS) / partitions);
    const high = Math.ceil(((k + 1) * SLOTS) / partitions);
    // Every share holds at least one slot (partitions ≤ SLOTS); CRC16 reaches each slot among
    // short strings quickly (a few thousand tries at the most for one slot).
    for (let n = 0; ; n++) {
      const tag = `${k}.${n.toString(36)}`;
      const slot = crc16(tag) % SLOTS;
      if (slot >= low && slot < high) {
        tags.push(tag);
        break;
      }
    }
  }
  return tags;
}

/** CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the hash Redis Cluster slots keys by. */
const CRC_TABLE = (() => {
  const table = new Uint16Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    table[byte] = crc;
  }
  return table;
})();

/** Of the UTF-8 bytes of `text` (as Redis hashes a key), encoded on the way: one per publish, no allocation. */
export function crc16(text: string): number {
  let crc = 0;
  const add = (byte: number): void => {
    crc = ((crc << 8) & 0xffff) ^ CRC_TABLE[((crc >> 8) ^ byte) & 0xff]!;
  };
  for (let i = 0; i < text.length; i++) {
    let code = text.charCodeAt(i);
    if (code < 0x80) {
      add(code);
      continue;
    }
    if (code >= 0xd800 && code < 0xdc00 && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low < 0xe000) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    if (code >= 0xd800 && code < 0xe000) code = 0xfffd; // a lone surrogate, as TextEncoder writes it
    if (code < 0x800) {
      add(0xc0 | (code >> 6));
    } else if (code < 0x10000) {
      add(0xe0 | (code >> 12));
      add(0x80 | ((code >> 6) & 0x3f));
    } else {
      add(0xf0 | (code >> 18));
      add(0x80 | ((code >> 12) & 0x3f));
      add(0x80 | ((code >> 6) & 0x3f));
    }
    add(0x80 | (code & 0x3f));
  }
  return crc;
}
