/**
 * A node that heard nothing of the bus for a while (its subscriber connection to Redis lost, then
 * back) catches its sessions and in-process listeners up from the history, as a client recovers,
 * but once for the node and for every client, CometD's and Faye's included, which have no recovery
 * of their own.
 *
 * The node notes, per channel its sessions or in-process listeners want, the position of the last
 * message it delivered there. From the moment it loses the bus, the messages it hears on those
 * channels wait here (the first come after the renewed SUBSCRIBE, before the node knows it hears
 * again); once it does, one READ per partition (the recovery's script, with a fence behind it: redis-seam.ts)
 * returns what was published after each noted position, which goes to the channel's subscribers
 * first, in order; then the messages that waited, but those the replay already carried. A channel
 * whose history no longer holds what was missed gets what waited, and its clients that track
 * positions see the gap. Losing the bus again while a catch-up is under way starts a new segment:
 * what is heard after that waits for the next catch-up, which starts where this one ended.
 *
 * A publish of this node that it cannot hear (redis.ts `deliverHere`: Redis took it, the node
 * could not hear it or not be sure to) waits in its place too while its channel is caught up, so
 * that every client, CometD's and Faye's too, gets each channel in the history's order. Delivered
 * here otherwise (its channel not being caught up: the node hears, or had not heard the channel
 * before), it is left out of any later replay or echo, until the node has heard past it.
 */
import type { Position } from '@perihelion/protocol';
import type { Publication } from './engine.js';

/** The most channels whose last position is noted (a wildcard subscriber may hear without end): past it, new ones are not caught up. */
const MAX_NOTED = 100_000;

/** In a channel's waiting messages: the bus was lost again; what follows waits for the next catch-up. */
const LOST_AGAIN = null;

/**
 * A channel's messages waiting for its catch-up at most: past it the channel's catch-up is given
 * up (what waited goes out at once; clients that track positions recover the gap themselves).
 */
const MAX_WAITING = 10_000;

/** Positions delivered here ahead of the last one heard, kept at most per channel (the oldest forgotten first). */
const MAX_AHEAD = 1000;

export class CatchUp {
  /** Per channel with subscribers or listeners here, the position of the last message delivered here. */
  private readonly lastHeard = new Map<string, Position>();
  /** The channels being caught up, and the messages heard on them meanwhile, in order. */
  private readonly waiting = new Map<string, Array<Publication | typeof LOST_AGAIN>>();
  /** The channels to read once the node hears again. */
  private readonly due = new Set<string>();
  /**
   * Per channel, the positions of this node's own messages delivered here without being heard
   * ("epoch:offset"), past the last one heard: the node may have missed what came before them,
   * so they cannot move `lastHeard`, and are not delivered again when heard or replayed.
   */
  private readonly ahead = new Map<string, Set<string>>();

  /**
   * A positioned message about to be delivered on `channel` (which has subscribers here): noted,
   * and true, unless a message at or past its position was delivered there already (a replay
   * went ahead of a live message slower than the catch-up's fence), or it is one of this node's
   * delivered ahead, then false: not again.
   */
  heard(channel: string, position: Position): boolean {
    const last = this.lastHeard.get(channel);
    if (last && last.epoch === position.epoch && position.offset <= last.offset) return false;
    if (last || this.lastHeard.size < MAX_NOTED) this.lastHeard.set(channel, position);
    const ahead = this.ahead.get(channel);
    if (!ahead) return true;
    const deliveredAlready = ahead.delete(`${position.epoch}:${position.offset}`);
    for (const key of ahead) if (isPassed(key, position)) ahead.delete(key);
    if (ahead.size === 0) this.ahead.delete(channel);
    return !deliveredAlready;
  }

  /** No session here subscribes to `channel` any more. */
  forget(channel: string): void {
    if (this.waiting.has(channel)) return;
    this.lastHeard.delete(channel);
    this.ahead.delete(channel);
  }

  /** A message of this node's own delivered here without being heard: not delivered again on `channel`, replayed or heard. */
  deliveredHere(channel: string, position: Position): void {
    const last = this.lastHeard.get(channel);
    if (last && last.epoch === position.epoch && position.offset <= last.offset) return;
    let ahead = this.ahead.get(channel);
    if (!ahead) this.ahead.set(channel, (ahead = new Set()));
    else if (ahead.size >= MAX_AHEAD) ahead.delete(ahead.values().next().value!);
    ahead.add(`${position.epoch}:${position.offset}`);
  }

  /**
   * Keeps a message heard on a channel being caught up, or one of this node's own published there
   * meanwhile (not heard), which then goes out in its place after the replay, not ahead of what
   * the other nodes published before it. False when the channel is not being caught up, or when
   * MAX_WAITING wait already: then its catch-up is given up, what waited goes to `deliver`, and
   * this one goes out after it.
   */
  held(channel: string, publication: Publication, deliver: (publication: Publication) => void): boolean {
    const waiting = this.waiting.get(channel);
    if (!waiting) return false;
    if (waiting.length < MAX_WAITING) {
      waiting.push(publication);
      return true;
    }
    this.release(channel, deliver);
    return false;
  }

  /**
   * The node lost the bus: the channels `stillWanted` keeps (those with subscribers here; the
   * others are forgotten) are to be caught up, and what is heard on them waits from now on.
   */
  deafened(stillWanted: (channel: string) => boolean): void {
    for (const channel of this.lastHeard.keys()) {
      if (!stillWanted(channel)) {
        this.lastHeard.delete(channel);
        continue;
      }
      this.due.add(channel);
      const waiting = this.waiting.get(channel);
      if (waiting) waiting.push(LOST_AGAIN);
      else this.waiting.set(channel, []);
    }
  }

  /** A read failed: `channels` are to be read again (what waits keeps waiting). */
  again(channels: Iterable<string>): void {
    for (const channel of channels) if (this.waiting.has(channel)) this.due.add(channel);
  }

  /** The channels to read now, each from the position last delivered there. */
  takeDue(): Map<string, Position> {
    const from = new Map<string, Position>();
    for (const channel of this.due) {
      const position = this.lastHeard.get(channel);
      if (position) from.set(channel, position);
    }
    this.due.clear();
    return from;
  }

  /**
   * Ends a read of `channel`: `replayed` (what followed the position it started from) is
   * delivered, then the messages that waited, those the replay covered left out, up to a loss of
   * the bus since, if any: what followed it waits for the next read.
   */
  end(channel: string, replayed: readonly string[], deliver: (publication: Publication) => void): void {
    const waited = this.waiting.get(channel) ?? [];
    const lostAgain = waited.indexOf(LOST_AGAIN);
    if (lostAgain >= 0) this.waiting.set(channel, waited.slice(lostAgain + 1));
    else this.waiting.delete(channel);
    // What the replay carried too, and this node's own delivered already, are left out by `heard`, on the way.
    for (const payload of replayed) deliver(replayedPublication(channel, payload));
    for (const publication of lostAgain >= 0 ? waited.slice(0, lostAgain) : waited) deliver(publication!);
  }

  /** Gives up on `channels` still waiting and not due a read: what waited on them is delivered. */
  giveUp(channels: Iterable<string>, deliver: (publication: Publication) => void): void {
    for (const channel of channels) if (!this.due.has(channel)) this.release(channel, deliver);
  }

  /** Ends `channel`'s catch-up, read or not: what waited on it is delivered. */
  private release(channel: string, deliver: (publication: Publication) => void): void {
    const waited = this.waiting.get(channel);
    if (!waited) return;
    this.waiting.delete(channel);
    this.due.delete(channel);
    for (const publication of waited) if (publication !== LOST_AGAIN) deliver(publication);
  }
}

/** Whether the position `key` ("epoch:offset") is at or before `position`, or of another epoch (the history it belonged to is gone). */
function isPassed(key: string, position: Position): boolean {
  const colon = key.lastIndexOf(':');
  return key.slice(0, colon) !== position.epoch || Number(key.slice(colon + 1)) <= position.offset;
}

/** A message of the history, as a live one: its position is in its payload (the publish script put it there). */
function replayedPublication(channel: string, payload: string): Publication {
  const message = JSON.parse(payload) as Publication['message'];
  const position = (message.ext as { position?: Position } | undefined)?.position;
  const publication = { channel, payload, ext: position ? 'object' : 'other', message } as Publication;
  if (position) publication.position = position;
  return publication;
}
