/**
 * callback-polling (JSONP): `GET <url>?jsonp=<callback>&message=<json>` loaded as a script that
 * calls the callback with the reply array. It works where neither WebSocket nor a cross-origin
 * request with CORS does, as the last resort for a page on another origin than the server.
 * Only in a document (it needs script tags). One request at a time besides the held connect.
 */
import type { Message } from '@perihelion/protocol';
import { LongPolling } from './long-polling.js';

let counter = 0;

/**
 * The longest URL a request is given: proxies refuse longer ones (nginx and Apache at 8 KB), and
 * so does Node past 16 KB with the headers, with no answer a script could read (the line would be
 * taken for lost, and the message sent again, for ever).
 */
const MAX_URL = 8000;

export class CallbackPolling extends LongPolling {
  override readonly type = 'callback-polling' as const;
  private readonly scripts = new Set<HTMLScriptElement>();

  /**
   * The messages in as few URLs as fit within MAX_URL (and the server's maxBatch); one that cannot
   * fit even alone is answered here as the server refuses a message too large (413).
   */
  protected override frames(messages: Message[]): string[] {
    // The URL's start (a callback name of the longest kind), then `[`, `]` and the commas, 3 each once encoded.
    const room = MAX_URL - this.context.url.length - 50;
    const frames: string[] = [];
    let parts: string[] = [];
    let length = 3;
    for (const message of messages) {
      const text = JSON.stringify(message);
      const size = encodeURIComponent(text).length + 3;
      if (size + 3 > room) {
        const refusal: Message = { channel: message.channel, successful: false, error: `413:${message.channel}:too large for callback-polling` };
        if (message.id !== undefined) refusal.id = message.id;
        queueMicrotask(() => this.context.host.receive([refusal]));
      } else {
        if (parts.length > 0 && (length + size > room || parts.length >= this.context.limits().maxBatch)) {
          frames.push(`[${parts}]`);
          parts = [];
          length = 3;
        }
        parts.push(text);
        length += size;
      }
    }
    if (parts.length > 0) frames.push(`[${parts}]`);
    return frames;
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
