/**
 * The wire format of the Redis engine's pub/sub bus: what one node sends the others.
 *
 * Pub/sub channels carry it (their names are in redis-layout.ts): each partition's bus carries its
 * channels' broadcasts and fences, once, to every node; the control bus census questions; and
 * one channel per node what is meant for that node. A bus message is one line of JSON header, a
 * newline, and the payload: the Bayeux message exactly as its subscribers are sent it, serialised
 * once by the publishing node and never parsed or serialised again on the way (JSON never holds a
 * raw newline, so the first newline ends the header).
 *
 *   ["b", origin node, tag, channel]\n<payload>             a broadcast without a position
 *   ["b", origin node, tag, channel, {"epoch","offset"}]\n<payload>   a broadcast with one
 *   ["b", origin node, tag, channel, position or null, clientId]\n<payload>
 *                                                          a broadcast not for that session
 *                                                          (its publisher asked for no echo)
 *   ["d", clientId]\n<payload>                             a message for one session
 *   ["f", fence id]\n                                      a recovery fence (see redis-seam.ts)
 *   ["x", clientId]\n                                      end a session
 *   ["c", origin node, request id]\n                       a census: every node describes its sessions
 *   ["a", request id, node]\n<JSON array>                   one node's answer to a census
 *   ["n", from node]\n<text>                                a message from one node to another,
 *                                                          opaque here (core/forwarding.ts)
 *   ["m", key]\n                                           a message for this node too large for
 *                                                          pub/sub, waiting under `key` (one of the
 *                                                          above, whole: redis-node-mail.ts)
 *
 * A broadcast's position is given by Redis (the PUBLISH script, see redis-scripts.ts). The script
 * knows nothing of this format: it writes the position's JSON between the two halves of the
 * header that `broadcastHeader` made, and between the two halves of the payload.
 *
 * Another node's bytes are input like a client's: `decode` checks every field and returns a
 * `BusFormatError` for anything else, so that one bad message is reported and skipped. The format
 * carries no version: every node of a cluster runs the same Perihelion.
 */
import { asPosition, type Position } from '@perihelion/protocol';

export type BusMessage =
  | {
      kind: 'broadcast';
      /** The node that published it (it resolves its own pending publish by `tag`). */
      origin: string;
      tag: string;
      channel: string;
      /** Null when the channel keeps no history. */
      position: Position | null;
      /** The session it is not delivered to (see Publication.exclude). */
      exclude?: string;
      payload: string;
    }
  | { kind: 'direct'; clientId: string; payload: string }
  | { kind: 'fence'; fence: string }
  | { kind: 'end'; clientId: string }
  | { kind: 'census'; origin: string; request: string }
  /** `payload`: the node's SessionInfo array as JSON (checked by its reader, see redis-census.ts). */
  | { kind: 'answer'; request: string; node: string; payload: string }
  /** `payload`: opaque to the engine; the core reads it (forwarded requests, core/forwarding.ts). */
  | { kind: 'node'; from: string; payload: string }
  /** `key`: where the message waits (checked by its reader to be among this node's, see redis-node-mail.ts). */
  | { kind: 'mail'; key: string };

type BusKind = BusMessage['kind'];
export type Broadcast = Extract<BusMessage, { kind: 'broadcast' }>;

/** A bus message that could not be read; says what is wrong with it. */
export class BusFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BusFormatError';
  }
}

/** The header's first element for each kind: one letter keeps every message short. */
const TAGS = { broadcast: 'b', direct: 'd', fence: 'f', end: 'x', census: 'c', answer: 'a', node: 'n', mail: 'm' } as const satisfies Record<BusKind, string>;

export function encode(message: BusMessage): string {
  switch (message.kind) {
    case 'broadcast': {
      const [before, after] = broadcastHeader(message.origin, message.tag, message.channel, message.exclude);
      if (message.position === null) return message.exclude === undefined ? `${before.slice(0, -1)}${after}${message.payload}` : `${before}null${after}${message.payload}`;
      return `${before}${JSON.stringify(message.position)}${after}${message.payload}`;
    }
    case 'direct':
      return `${JSON.stringify([TAGS.direct, message.clientId])}\n${message.payload}`;
    case 'fence':
      return `${JSON.stringify([TAGS.fence, message.fence])}\n`;
    case 'end':
      return `${JSON.stringify([TAGS.end, message.clientId])}\n`;
    case 'census':
      return `${JSON.stringify([TAGS.census, message.origin, message.request])}\n`;
    case 'answer':
      return `${JSON.stringify([TAGS.answer, message.request, message.node])}\n${message.payload}`;
    case 'node':
      return `${JSON.stringify([TAGS.node, message.from])}\n${message.payload}`;
    case 'mail':
      return `${JSON.stringify([TAGS.mail, message.key])}\n`;
  }
}

/**
 * The header of a broadcast whose position is not known yet, as the text before and after the
 * position's JSON (`{"epoch":…,"offset":…}`); the newline that ends the header is in the second.
 */
export function broadcastHeader(origin: string, tag: string, channel: string, exclude?: string): [before: string, after: string] {
  return [`${JSON.stringify([TAGS.broadcast, origin, tag, channel]).slice(0, -1)},`, exclude === undefined ? ']\n' : `,${JSON.stringify(exclude)}]\n`];
}

export function decode(text: string): BusMessage | BusFormatError {
  const newline = text.indexOf('\n');
  if (newline < 0) return new BusFormatError('no newline after the header');
  let header: unknown;
  try {
    header = JSON.parse(text.slice(0, newline));
  } catch (error) {
    return new BusFormatError(`the header is not JSON (${(error as Error).message})`);
  }
  if (!Array.isArray(header) || header.length === 0) return new BusFormatError('the header is not a non-empty array');
  const payload = text.slice(newline + 1);
  const [tag, ...fields] = header as unknown[];
  switch (tag) {
    case TAGS.broadcast: {
      const [origin, publishTag, channel, position, exclude, ...extra] = fields;
      if (!isText(origin) || !isText(publishTag) || !isText(channel)) {
        return new BusFormatError('a broadcast header needs a node, a tag and a channel, all non-empty strings');
      }
      if (extra.length > 0) return new BusFormatError(`a broadcast header has ${header.length} elements, at most 6 expected`);
      const at = position === undefined || (position === null && exclude !== undefined) ? null : asPosition(position);
      if (at === null && position !== undefined && !(position === null && exclude !== undefined)) {
        return new BusFormatError(`a broadcast's position is malformed: ${JSON.stringify(position)}`);
      }
      if (exclude !== undefined && !isText(exclude)) return new BusFormatError('a broadcast\'s excluded session must be a non-empty string');
      const broadcast: Broadcast = { kind: 'broadcast', origin, tag: publishTag, channel, position: at, payload };
      if (exclude !== undefined) broadcast.exclude = exclude;
      return needsPayload('broadcast', payload) ?? broadcast;
    }
    case TAGS.direct: {
      const clientId = onlyString(fields);
      if (clientId === null) return new BusFormatError('a direct message header needs exactly one clientId (a non-empty string)');
      return needsPayload('direct message', payload) ?? { kind: 'direct', clientId, payload };
    }
    case TAGS.fence: {
      const fence = onlyString(fields);
      if (fence === null) return new BusFormatError('a fence header needs exactly one fence id (a non-empty string)');
      return payload === '' ? { kind: 'fence', fence } : new BusFormatError('a fence carries no payload');
    }
    case TAGS.end: {
      const clientId = onlyString(fields);
      if (clientId === null) return new BusFormatError('an end-session header needs exactly one clientId (a non-empty string)');
      return payload === '' ? { kind: 'end', clientId } : new BusFormatError('an end-session message carries no payload');
    }
    case TAGS.census: {
      const [origin, request, ...extra] = fields;
      if (!isText(origin) || !isText(request) || extra.length > 0) return new BusFormatError('a census header needs a node and a request id, both non-empty strings');
      return payload === '' ? { kind: 'census', origin, request } : new BusFormatError('a census carries no payload');
    }
    case TAGS.answer: {
      const [request, node, ...extra] = fields;
      if (!isText(request) || !isText(node) || extra.length > 0) return new BusFormatError('a census answer header needs a request id and a node, both non-empty strings');
      return payload.startsWith('[') && payload.endsWith(']') ? { kind: 'answer', request, node, payload } : new BusFormatError("a census answer's payload is not a JSON array");
    }
    case TAGS.node: {
      const from = onlyString(fields);
      if (from === null) return new BusFormatError('a node message header needs exactly one node id (a non-empty string)');
      return { kind: 'node', from, payload };
    }
    case TAGS.mail: {
      const key = onlyString(fields);
      if (key === null) return new BusFormatError('a mail header needs exactly one key (a non-empty string)');
      return payload === '' ? { kind: 'mail', key } : new BusFormatError('a mail message carries no payload');
    }
    default:
      return new BusFormatError(`unknown message kind ${JSON.stringify(tag)}`);
  }
}

function isText(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

/** The one field of a header that has one (a clientId, a fence id). */
function onlyString(fields: unknown[]): string | null {
  return fields.length === 1 && isText(fields[0]) ? fields[0] : null;
}

/** A payload is one serialised message: checked by its ends only (parsing it is for whoever reads it). */
function needsPayload(what: string, payload: string): BusFormatError | null {
  return payload.startsWith('{') && payload.endsWith('}') ? null : new BusFormatError(`a ${what}'s payload is not a JSON object`);
}
