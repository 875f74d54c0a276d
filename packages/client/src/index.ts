// The types speak of the browser's objects (a document, its locks, EventSource): a Node project,
// compiled without the DOM library, is given it with them.
/// <reference lib="dom" preserve="true" />
/**
 * @perihelion/client: a Bayeux client for browsers and Node.
 *
 *   const client = new Client('https://example.com/bayeux');
 *   await client.subscribe('/chat/room1', (data) => console.log(data));
 *   await client.publish('/chat/room1', { text: 'hi' });
 */
import { serveSharedWorker } from './worker.js';

export { Client, Subscription, type ClientOptions, type ClientEvents, type Handler, type Member, type PresenceEvent, type Sharing, type SubscribeOptions } from './client.js';
export { ClientError, type ClientErrorCode } from './errors.js';
export { byType, type TypedEvent } from './by-type.js';
export type { State, StateChange, TransportChange } from './bayeux.js';
export type { Extension } from './extensions.js';
export type { Position, RecoveryOutcome } from './subscriptions.js';
export type { ConnectionType, Message } from '@perihelion/protocol';
export type { WebSocketConstructor, WebSocketLike } from './transports/transport.js';

// Loaded as a SharedWorker (tab sharing loads this very script), it serves the tabs instead.
serveSharedWorker();
