/**
 * What one node sends another through Redis: large messages by way of a key.
 *
 * A node's pub/sub channel carries what is meant for it alone: the replies of the requests it
 * forwarded and the frames for the lines it holds (core/forwarding.ts), relayed state snapshots,
 * census answers. Redis bounds what may wait in a subscriber's output buffer
 * (`client-output-buffer-limit pubsub`, 32 MB by default) and cuts a subscriber off past it: a
 * burst of large replies would make the node deaf to the whole bus, and a single message near the
 * bound could never pass. So a message larger than `nodeMessageInlineBytes` is stored under a key
 * of its own, which expires after the node timeout (a node that has not taken it by then is taken
 * for dead), and the channel carries only the key's name; the receiving node takes it (GETDEL,
 * through its command connection, whose replies Redis does not bound) and reads it as if it had
 * come on the channel. One script stores the key and publishes its name (in the channel's hash slot
 * on a Redis Cluster): the key is there when the name is, and is not kept when nobody listens.
 *
 * Order, as pub/sub keeps it for small messages: a node's messages to another leave in the order
 * they were sent (those behind a stored one wait until its script has run), and what comes on
 * the channel is read in the order it came (those behind a stored one wait until it has been
 * taken, one round trip). Each stored message holds the others up for at most `commandTimeout`
 * (a script or take that gets no answer by then fails), so what waits in memory is bounded by
 * what comes in that time. A message that cannot be taken (expired, Redis away) is lost as a
 * pub/sub message would be, and reported; the deadlines of forwarding cover it.
 */
import type { Redis } from 'ioredis';
import { BusFormatError, decode, encode, type BusMessage } from './redis-bus.js';
import { unavailable, type RedisConnection } from './redis-connection.js';
import type { RedisLayout } from './redis-layout.js';

export interface NodeMailParts {
  readonly connection: RedisConnection;
  readonly layout: RedisLayout;
  readonly nodeId: string;
  /** Larger messages are stored (0: none is). */
  readonly inlineBytes: number;
  /** How long a stored message waits to be taken, ms. */
  readonly keepMs: number;
  /** Reads one message of this node's channel, in order. */
  read(message: BusMessage): void;
  report(error: unknown): void;
}

/** A message of this node's channel not read yet: `message` is null until taken (or when lost). */
interface Waiting {
  message: BusMessage | null;
  ready: boolean;
}

export class NodeMail {
  private readonly waiting: Waiting[] = [];
  /** The prefix of the keys meant for this node: a name outside it is not taken (nor deleted). */
  private readonly ownKeys: string;
  private stored = 0;
  /** Messages meant for this node that could not be taken. */
  private lost = 0;
  /** Per node, the latest stored message to it that Redis has not taken yet (see send). */
  private readonly storing = new Map<string, Promise<void>>();

  constructor(private readonly parts: NodeMailParts) {
    this.ownKeys = parts.layout.nodeMail(parts.nodeId);
  }

  /**
   * Sends `text` (an encoded bus message) to `node`; resolves to how many heard it (0: nobody
   * listens). What follows a stored message to the same node is sent once Redis has run its
   * script (which may take a second round trip, to load the script): sent at once, it could
   * overtake it. Only stored messages hold the others up, each for one script's run at most.
   */
  send(cmd: Redis, node: string, text: string): Promise<number> {
    const large = this.tooLarge(text);
    const before = this.storing.get(node);
    const issue = (): Promise<number> => (large ? this.store(node, text) : this.parts.connection.send(cmd, this.parts.layout.node(node), text));
    if (before === undefined && !large) return issue();
    // Callbacks on one promise run in the order they were added: the messages keep theirs.
    const sent = before === undefined ? issue() : before.then(issue);
    if (large) {
      const stored = sent.then(
        () => undefined,
        () => undefined,
      );
      this.storing.set(node, stored);
      void stored.then(() => {
        if (this.storing.get(node) === stored) this.storing.delete(node);
      });
    }
    return sent;
  }

  private async store(node: string, text: string): Promise<number> {
    const { connection, layout } = this.parts;
    const channel = layout.node(node);
    const key = `${layout.nodeMail(node)}${this.parts.nodeId}:${++this.stored}`;
    // The script is given the key's name after the channel's (its prefix): see MAIL.
    return Number(await connection.script('MAIL', channel, [key.slice(channel.length), text, this.parts.keepMs, layout.publishCommand, encode({ kind: 'mail', key })]));
  }

  /** How many messages this node stored for others, and how many meant for it were lost. */
  stats(): { stored: number; lost: number } {
    return { stored: this.stored, lost: this.lost };
  }

  /** One message of this node's channel, as it came. */
  receive(message: BusMessage): void {
    if (message.kind === 'mail') this.take(message.key);
    else if (this.waiting.length === 0) this.read(message);
    else this.waiting.push({ message, ready: true });
  }

  private tooLarge(text: string): boolean {
    const limit = this.parts.inlineBytes;
    // A UTF-8 character takes at most three bytes per UTF-16 unit: most texts need no count.
    return limit > 0 && text.length * 3 > limit && (text.length > limit || Buffer.byteLength(text) > limit);
  }

  private take(key: string): void {
    if (!key.startsWith(this.ownKeys)) {
      this.parts.report(new BusFormatError(`a mail message names a key not meant for this node, not taken: ${JSON.stringify(key)}`));
      return;
    }
    const entry: Waiting = { message: null, ready: false };
    this.waiting.push(entry);
    this.fetch(key)
      .then(
        (message) => void (entry.message = message),
        (error: unknown) => {
          this.lost++;
          this.parts.report(unavailable(`a message from another node was lost: cannot take ${key}`, error));
        },
      )
      .finally(() => {
        entry.ready = true;
        this.readReady();
      });
  }

  private async fetch(key: string): Promise<BusMessage | null> {
    const { connection } = this.parts;
    const cmd = connection.readyCmd();
    if (!cmd) throw new Error('Redis is away');
    let text: string | null;
    try {
      text = await cmd.getdel(key);
    } catch (error) {
      connection.failed(error);
      throw error;
    }
    if (text === null) {
      this.lost++;
      this.parts.report(new Error(`a message from another node was lost: ${key} was gone when this node came to take it (it is kept ${this.parts.keepMs} ms)`));
      return null;
    }
    const message = decode(text);
    if (message instanceof BusFormatError || message.kind === 'mail') {
      this.lost++;
      this.parts.report(new BusFormatError(`unreadable message under ${key}: ${message instanceof BusFormatError ? message.message : 'a mail message names another'}`));
      return null;
    }
    return message;
  }

  /** Reads the messages at the head of the line that are ready. */
  private readReady(): void {
    while (this.waiting.length > 0 && this.waiting[0]!.ready) {
      const { message } = this.waiting.shift()!;
      if (message !== null) this.read(message);
    }
  }

  private read(message: BusMessage): void {
    try {
      this.parts.read(message);
    } catch (error) {
      // One message's failure does not hold up the others behind it.
      this.parts.report(error);
    }
  }
}
