/**
 * callback-polling (JSONP): `GET <url>?jsonp=<callback>&message=<json>` loaded as a script that
 * calls the callback with the reply array. It works where neither WebSocket nor a cross-origin
 * request with CORS does, as the last resort for a page on another origin than the server.
 * Only in a document (it needs script tags). One request at a time besides the held connect.
 */
import type { Message } from '@perihelion/protocol';
import { framesOf } from '../limits.js';
import { LongPolling } from './long-polling.js';

let counter = 0;

/**
 * The longest URL a request is given: proxies refuse longer ones (nginx and Apache at 8 KB), and
 * so does Node past 16 KB with the headers, with no answer a script could read (the line would be
 * taken for lost, and the message sent again, for ever).
 */
const MAX_URL = 8000;

/** Characters of `text` in a URL. */
const urlLength = (text: string): number => encodeURIComponent(text).length;

export class CallbackPolling extends LongPolling {
  override readonly type = 'callback-polling' as const;
  private readonly scripts = new Set<HTMLScriptElement>();

  /**
   * The messages in as few URLs as fit within MAX_URL (and the server's maxBatch); one that cannot
   * fit even alone is answered here as the server refuses a message too large (413).
   */
  protected override frames(messages: Message[]): string[] {
    // Past the URL's start, with a callback name of the longest kind.
    const room = MAX_URL - this.context.url.length - 50;
    const fits = messages.filter((message) => {
      if (urlLength(`[${JSON.stringify(message)}]`) <= room) return true;
      const refusal: Message = { channel: message.channel, successful: false, error: `413:${message.channel}:too large for callback-polling` };
      if (message.id !== undefined) refusal.id = message.id;
      queueMicrotask(() => this.context.host.receive([refusal]));
      return false;
    });
    return fits.length > 0 ? framesOf(fits, this.context.limits(), room, urlLength) : [];
  }

  protected override post(body: string): Promise<void> {
    const doc = this.context.env.document!;
    const name = `__perihelion_jsonp_${++counter}`;
    const globals = globalThis as unknown as Record<string, unknown>;
    return new Promise<void>((resolve) => {
      const script = doc.createElement('script');
      const done = (): void => {
        delete globals[name];
        script.remove();
        this.scripts.delete(script);
        resolve();
      };
      globals[name] = (replies: unknown) => {
        // A script that arrives after close() belongs to a dropped line: ignored.
        const live = this.scripts.has(script);
        done();
        if (live) this.context.host.receive((Array.isArray(replies) ? replies : [replies]) as Message[]);
      };
      script.onerror = () => {
        if (!this.scripts.has(script)) return;
        done();
        this.close();
        this.context.host.lost('a callback-polling request failed', true);
      };
      const separator = this.context.url.includes('?') ? '&' : '?';
      script.src = `${this.context.url}${separator}jsonp=${name}&message=${encodeURIComponent(body)}`;
      this.scripts.add(script);
      doc.head.appendChild(script);
    });
  }

  override close(): void {
    super.close();
    for (const script of this.scripts) script.remove();
    this.scripts.clear();
  }
}
