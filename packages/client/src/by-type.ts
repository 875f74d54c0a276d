/**
 * Data-driven push: the server sends typed events (`{ type: 'shipped', order: 7 }`), and the page
 * registers one handler per type. The server sends data, never code to run.
 *
 *   client.subscribe('/notifications', byType({ shipped: (event) => toast(event.order) }));
 */
import type { Handler } from './client.js';
import type { Message } from '@perihelion/protocol';

/** An event as sent: an object with a string `type` and whatever else the server put in it. */
export interface TypedEvent {
  type: string;
  [field: string]: unknown;
}

/**
 * A subscription handler that calls the handler registered for each event's `type`. Data that is
 * not an object with a string `type`, or whose type has no handler, goes to `otherwise` (default:
 * ignored), so that an older page meets a newer server's events without failing.
 */
export function byType(handlers: Record<string, (event: TypedEvent, message: Message) => void>, otherwise?: Handler): Handler {
  return (data, message) => {
    const type = (data as TypedEvent | null)?.type;
    const handler = typeof type === 'string' && {}.hasOwnProperty.call(handlers, type) ? handlers[type] : undefined;
    if (handler) handler(data as TypedEvent, message);
    else otherwise?.(data, message);
  };
}
