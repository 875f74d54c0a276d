/**
 * Extensions: hooks that see every message coming in and every message going out (Bayeux §ext;
 * the same idea as Faye's addExtension and CometD's server extensions).
 *
 * - `incoming(message, context)` runs on each message from a client, in the order the
 *   extensions were added, before the server acts on it. Return the message (changed or not) to
 *   go on, or null to refuse it: the client gets an unsuccessful reply. Setting
 *   `message.error` also refuses it, with that error string reaching the client unchanged.
 * - `outgoing(message, context)` runs on each reply to a client and, once per publish (not once
 *   per recipient, so the bytes can be shared), on each published message. Return null to drop it.
 */
import type { Message } from '@perihelion/protocol';
import type { TransportFacts } from '../core/contract.js';
import type { Session } from '../core/session.js';

export interface ExtensionContext {
  /** The session the message comes from or goes to; null for handshakes and server publishes. */
  session: Session | null;
  /** Transport facts; null for messages the server itself publishes. */
  transport: TransportFacts | null;
}

type Hook = (message: Message, context: ExtensionContext) => Message | null | Promise<Message | null>;

export interface Extension {
  incoming?: Hook;
  outgoing?: Hook;
}

const HOOKS = new Set(['incoming', 'outgoing']);

export class ExtensionPipeline {
  private readonly incomingHooks: Hook[] = [];
  private readonly outgoingHooks: Hook[] = [];

  add(extension: Extension): () => void {
    for (const key of Object.keys(extension)) {
      if (!HOOKS.has(key)) throw new TypeError(`unknown extension hook "${key}"; the hooks are: incoming, outgoing`);
    }
    const { incoming, outgoing } = extension;
    if (incoming) this.incomingHooks.push(incoming);
    // Outgoing hooks run in reverse order of addition, so an extension that wraps a message on
    // the way in unwraps it last on the way out.
    if (outgoing) this.outgoingHooks.unshift(outgoing);
    return () => {
      if (incoming) this.incomingHooks.splice(this.incomingHooks.indexOf(incoming), 1);
      if (outgoing) this.outgoingHooks.splice(this.outgoingHooks.indexOf(outgoing), 1);
    };
  }

  get hasOutgoing(): boolean {
    return this.outgoingHooks.length > 0;
  }

  incoming(message: Message, context: ExtensionContext): Message | null | Promise<Message | null> {
    return this.run(this.incomingHooks, message, context);
  }

  outgoing(message: Message, context: ExtensionContext): Message | null | Promise<Message | null> {
    return this.run(this.outgoingHooks, message, context);
  }

  private run(hooks: Hook[], message: Message, context: ExtensionContext): Message | null | Promise<Message | null> {
    // Without hooks, no promise is created: this is on the path of every message.
    if (hooks.length === 0) return message;
    return (async () => {
      let current: Message | null = message;
      for (const hook of hooks) {
        current = await hook(current, context);
        if (current === null || current.error !== undefined) return current;
      }
      return current;
    })();
  }
}
