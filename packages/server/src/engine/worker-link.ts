/**
 * The line between the workers of one machine and their broker (`perihelion serve --workers N`):
 * the messages each side sends, and the two kinds of line that carry them, the IPC channel of a
 * `node:cluster` worker and, for tests, a pair of in-process ends.
 *
 * One line per worker, in order both ways: a worker's calls are answered in the order they were
 * made, and what the broker hands a worker (publications, replays) arrives in the order the
 * broker's engine produced it, interleaved with the answers exactly as it happened there.
 */
import { isWildcard } from '@perihelion/protocol';
import type { LostSession, Publication, SessionInfo } from './engine.js';
import type { Retention } from './history.js';

/** A worker to the broker. */
export type ToBroker =
  /** First message: who the worker is, and its history bounds (the first worker's are used). */
  | { k: 'hello'; node: string; maxChannels: number; maxChars: number }
  /** An Engine method, with the retention of the channels it may give a history. */
  | { k: 'call'; id: number; method: string; args: unknown[]; retention: [string, Retention][] }
  /** The answer to a 'describe'. */
  | { k: 'described'; id: number; sessions: SessionInfo[] };

/** A publication on its way to a worker: everything but the message object (see `fromWire`). */
export type WirePublication = Omit<Publication, 'message'>;

/** A publication as it goes on the wire: its bytes, without the message object they were made from. */
export function toWire(publication: Publication): WirePublication {
  const { channel, payload, ext, position, exclude } = publication;
  return { channel, payload, ext, ...(position ? { position } : {}), ...(exclude !== undefined ? { exclude } : {}) };
}

/** A publication from the wire, its message object parsed from its bytes when first asked for. */
export function fromWire(wire: WirePublication): Publication {
  let message: Publication['message'] | undefined;
  return Object.assign(wire, {
    get message(): Publication['message'] {
      message ??= JSON.parse(wire.payload) as Publication['message'];
      return message;
    },
  });
}

/** The broker to a worker. */
export type ToWorker =
  | { k: 'ret'; id: number; ok: true; value: unknown }
  | { k: 'ret'; id: number; ok: false; code: string; message: string }
  | { k: 'pub'; publication: WirePublication; ids: string[] }
  | { k: 'direct'; publication: WirePublication; clientId: string }
  | { k: 'end'; clientId: string }
  | { k: 'replay'; clientId: string; channel: string; payloads: string[] }
  | { k: 'node'; from: string; payload: string }
  | { k: 'describe'; id: number }
  /** Sessions of a worker that exited, for this one to end in presence (one worker is told). */
  | { k: 'lost'; sessions: LostSession[] };

/** One end of a line. */
export interface LinkEnd<Out, In> {
  send(message: Out): void;
  onMessage(handler: (message: In) => void): void;
  /**
   * Messages sent and not yet handed to the other side (an IPC channel whose reader is behind
   * fills up); the broker refuses publishes while a worker's line holds too many.
   */
  backlog?(): number;
}

/**
 * The two ends of an in-process line, for tests: each message is cloned (as IPC serialises it)
 * and arrives in a later task, in order.
 */
export function linkPair(): { worker: LinkEnd<ToBroker, ToWorker>; broker: LinkEnd<ToWorker, ToBroker> } {
  const toWorker: ((message: ToWorker) => void)[] = [];
  const toBroker: ((message: ToBroker) => void)[] = [];
  const waiting = { toWorker: 0, toBroker: 0 };
  const deliver = <T>(handlers: ((message: T) => void)[], message: T, way: keyof typeof waiting): void => {
    const copy = structuredClone(message);
    waiting[way]++;
    setImmediate(() => {
      waiting[way]--;
      for (const handler of handlers) handler(copy);
    });
  };
  return {
    worker: { send: (message) => deliver(toBroker, message, 'toBroker'), onMessage: (handler) => void toWorker.push(handler), backlog: () => waiting.toBroker },
    broker: { send: (message) => deliver(toWorker, message, 'toWorker'), onMessage: (handler) => void toBroker.push(handler), backlog: () => waiting.toWorker },
  };
}

/** The worker's end of its IPC channel to the primary process (a `node:cluster` worker, or any child with IPC). */
export function parentLink(): LinkEnd<ToBroker, ToWorker> {
  if (typeof process.send !== 'function') throw new Error('parentLink: this process has no IPC channel to a parent');
  let backlog = 0;
  return {
    send: (message) => {
      backlog++;
      process.send!(message, () => backlog--);
    },
    onMessage: (handler) => void process.on('message', (message) => handler(message as ToWorker)),
    backlog: () => backlog,
  };
}

/** The channels a call may give a history (whose retention the broker must know). */
export function channelsOf(method: string, args: readonly unknown[]): string[] {
  switch (method) {
    case 'publish':
      return [(args[0] as Publication).channel];
    case 'subscribe': {
      const pattern = args[1] as string;
      const recover = (args[2] as { channel: string }[] | undefined) ?? [];
      return [...(isWildcard(pattern) ? [] : [pattern]), ...recover.map((r) => r.channel)];
    }
    case 'history':
      return [args[0] as string];
    default:
      return [];
  }
}
