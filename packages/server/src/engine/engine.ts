/**
 * The engine: where subscriptions live and how a publish reaches every node's sessions.
 *
 * The memory engine (default) keeps everything in this process. A cluster engine (Redis) keeps a
 * local index for the sessions connected to this node and carries each publish between nodes
 * once, as the already-serialised payload. The server core never touches the subscription index
 * directly, so engines can be swapped without changing it. `conformance.ts` holds the suite every
 * engine must pass.
 */
import type { Message } from '@perihelion/protocol';

/** A message on its way to subscribers: the object for in-process listeners, the bytes for sessions. */
export interface Publication {
  channel: string;
  message: Message;
  /** `JSON.stringify(message)`, computed once per publish and shared by every recipient. */
  payload: string;
}

/** What the server gives the engine so that publications reach this node's sessions and listeners. */
export interface EngineHost {
  /** A broadcast publication, with the ids of this node's sessions subscribed to its channel (deduplicated). */
  onPublication(publication: Publication, clientIds: Iterable<string>): void;
  /** A publication addressed to one session on this node. */
  onDirect(publication: Publication, clientId: string): void;
}

export interface Engine {
  /** Short name for logs and stats: "memory", "redis". */
  readonly name: string;
  start(host: EngineHost): Promise<void>;
  close(): Promise<void>;
  subscribe(clientId: string, pattern: string): Promise<void>;
  unsubscribe(clientId: string, pattern: string): Promise<void>;
  /** Forgets every subscription of a session that has ended. */
  removeSession(clientId: string): Promise<void>;
  /** Delivers to every session whose subscriptions match `publication.channel`, on every node. */
  publish(publication: Publication): Promise<void>;
  /** Delivers to one session, wherever it is connected; false when no node knows it. */
  sendTo(clientId: string, publication: Publication): Promise<boolean>;
  /** The sessions subscribed to exactly this channel or pattern (on every node). */
  subscribers(pattern: string): Promise<string[]>;
  /** Number of sessions subscribed to exactly this channel or pattern. */
  subscriberCount(pattern: string): Promise<number>;
  /** Every channel or pattern that has at least one subscriber, with the count. */
  channels(): Promise<Map<string, number>>;
}
