/**
 * callback-polling (JSONP): `GET <url>?jsonp=<callback>&message=<json>` loaded as a script that
 * calls the callback with the reply array. It works where neither WebSocket nor a cross-origin
 * request with CORS does, as the last resort for a page on another origin than the server.
 * Only in a document (it needs script tags). One request at a time besides the held connect.
 */
import type { Message } from '@perihelion/protocol';
import { LongPolling } from './long-polling.js';

let counter = 0;

export class CallbackPolling extends LongPolling {
  override readonly type = 'callback-polling' as const;
  private readonly scripts = new Set<HTMLScriptElement>();

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
