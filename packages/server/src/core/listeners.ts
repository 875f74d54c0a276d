import { isService, matchingPatterns, type Message } from '@perihelion/protocol';
import type { Session } from './session.js';

/**
 * In-process listeners (server-side subscribers). For a broadcast message `session` is null;
 * for a /service message it is the sending session, and a value returned (or resolved) by the
 * listener is sent back to that session as the reply to the request (CometD's remote call).
 */
export type Listener = (message: Message, session: Session | null) => unknown;

/** Listeners by channel or pattern, matched like subscriptions: depth+1 look-ups per message. */
export class ListenerRegistry {
  private readonly byPattern = new Map<string, Set<Listener>>();
  /** Keys of byPattern outside /service, which broadcast channels may match. */
  private broadcastPatterns = 0;

  /** `report` receives what a listener throws (the server's 'error' event). */
  constructor(private readonly report: (error: unknown) => void) {}

  add(pattern: string, listener: Listener): () => void {
    let set = this.byPattern.get(pattern);
    if (!set) {
      this.byPattern.set(pattern, (set = new Set()));
      if (!isService(pattern)) this.broadcastPatterns++;
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.byPattern.get(pattern) === set) {
        this.byPattern.delete(pattern);
        if (!isService(pattern)) this.broadcastPatterns--;
      }
    };
  }

  /**
   * Whether a listener may want broadcasts at all: the server's own services listen on /service
   * only, and a publish then need not look for listeners.
   */
  get hearsBroadcasts(): boolean {
    return this.broadcastPatterns > 0;
  }

  match(channel: string): Listener[] {
    const out: Listener[] = [];
    if (this.byPattern.size === 0) return out;
    for (const key of matchingPatterns(channel)) {
      const set = this.byPattern.get(key);
      if (set) for (const listener of set) if (!out.includes(listener)) out.push(listener);
    }
    return out;
  }

  /** Calls the listeners matching the message's channel; resolves to the first value one returns. */
  async notify(message: Message, session: Session | null): Promise<unknown> {
    return (await this.ask(message, session)).answer;
  }

  /**
   * `notify` for a request (a /service message): also says whether a listener threw, so that a
   * request nobody could answer gets an error reply instead of silence.
   */
  async ask(message: Message, session: Session | null): Promise<{ answer: unknown; failed: boolean }> {
    let answer: unknown;
    let failed = false;
    for (const listener of this.match(message.channel)) {
      try {
        const value = await listener(message, session);
        if (answer === undefined && value !== undefined) answer = value;
      } catch (error) {
        failed = true;
        this.report(error);
      }
    }
    return { answer, failed };
  }
}
