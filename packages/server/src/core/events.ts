/**
 * The server's events, as applications receive them through `server.on(event, listener)`.
 * Emitted by the meta handlers (handshake, subscribe, unsubscribe), the publish path (publish)
 * and local delivery (disconnect); 'error' reports a failure the server survived.
 */
import { EventEmitter } from 'node:events';
import type { Message } from '@perihelion/protocol';
import type { Session } from './session.js';

const DISCONNECT_REASONS = ['client', 'expired', 'server', 'shutdown', 'token-expired', 'abuse', 'slow-consumer'] as const;

export type DisconnectReason = (typeof DISCONNECT_REASONS)[number];

/** Whether `value` names why a session ended (as another node says it: checked like a client's input). */
export function isDisconnectReason(value: unknown): value is DisconnectReason {
  return (DISCONNECT_REASONS as readonly unknown[]).includes(value);
}

export interface ServerEvents {
  handshake: [session: Session];
  subscribe: [session: Session, channel: string];
  unsubscribe: [session: Session, channel: string];
  publish: [message: Message, session: Session | null];
  disconnect: [session: Session, reason: DisconnectReason];
  /** A failure inside the server (a listener or hook that threw, an engine error); it keeps serving. */
  error: [error: unknown];
  /**
   * The engine is whole again after failures reported through 'error' (Redis answers again and
   * holds this node's sessions): what an operator watching the errors waits for. Once per outage.
   */
  restored: [message: string];
}

export type ServerEventEmitter = EventEmitter<ServerEvents>;

export function serverEvents(): ServerEventEmitter {
  const events = new EventEmitter<ServerEvents>();
  // Errors are reported through 'error' only if someone listens; never crash the server.
  events.on('error', () => {});
  return events;
}
