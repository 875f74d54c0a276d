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

  /**
   * Runs the hooks in order. While they answer at once, so does this (no promise: this is on the
   * path of every message, and an application's extensions are mostly synchronous); from the
   * first that answers with a promise on, the rest wait for it. A hook that throws makes a
   * rejected promise, as one that rejects.
   */
  private run(hooks: Hook[], message: Message, context: ExtensionContext): Message | null | Promise<Message | null> {
    let current: Message | null = message;
    try {
      for (let i = 0; i < hooks.length; i++) {
        const result = hooks[i]!(current, context);
        if (isThenable(result)) return this.finish(hooks, i + 1, result, context);
        current = result;
        if (current === null || current.error !== undefined) return current;
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return current;
  }

  private async finish(hooks: Hook[], from: number, pending: PromiseLike<Message | null>, context: ExtensionContext): Promise<Message | null> {
    let current = await pending;
    for (let i = from; i < hooks.length; i++) {
      if (current === null || current.error !== undefined) return current;
      current = await hooks[i]!(current, context);
    }
    return current;
  }
}

function isThenable(value: unknown): value is PromiseLike<Message | null> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}
