/**
 * The streamed types: messages from the client travel by POST (as long-polling, answered at
 * once), messages from the server on one long response opened with `GET <url>/<clientId>`:
 * - `eventsource`: Server-Sent Events through the environment's EventSource;
 * - `http-streaming`: newline-delimited JSON read from a fetch() body (works in Node too).
 *
 * The server writes a first frame as soon as the stream opens (an SSE `connected` event, an
 * ndjson `[]` line). `openStream` resolves on that frame; a client that does not see it soon is
 * behind an intermediary that buffers responses and abandons the type (see Bayeux.openStream).
 *
 * A stream can die without a close (a NAT or a proxy that forgets the connection): once open,
 * one that carries nothing for `silence` ms (the server's hold plus the client's `lineTimeout`;
 * the server's heartbeats come more often) is reported lost. An http-streaming heartbeat is a
 * `[]` line; an SSE comment never reaches an EventSource listener, so the eventsource line is
 * watched once the server shows it sends `heartbeat` events: its `connected` event names its
 * heartbeat (Perihelion), or a first `heartbeat` event arrives.
 */
import type { ConnectionType } from '@perihelion/protocol';
import { LongPolling } from './long-polling.js';
import { parseBatch } from './transport.js';

/** A deadline pushed back by every sign of life; `silence` ≤ 0 turns it off. */
class Watchdog {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private armed = false;

  constructor(
    private readonly silence: number,
    private readonly expired: () => void,
  ) {}

  /** Starts watching (a no-op when already watching). */
  arm(): void {
    if (this.armed || !(this.silence > 0)) return;
    this.armed = true;
    this.alive();
  }

  alive(): void {
    if (!this.armed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(this.expired, this.silence);
  }

  stop(): void {
    this.armed = false;
    clearTimeout(this.timer);
  }
}

function announcesHeartbeat(data: unknown): boolean {
  try {
    return typeof (JSON.parse(String(data)) as { heartbeat?: unknown } | null)?.heartbeat === 'number';
  } catch {
    return false;
  }
}

function streamUrl(url: string, clientId: string): string {
  const [path, query] = url.split('?', 2) as [string, string | undefined];
  return `${path.replace(/\/$/, '')}/${encodeURIComponent(clientId)}${query === undefined ? '' : `?${query}`}`;
}

export class EventSourceTransport extends LongPolling {
  override readonly type: ConnectionType = 'eventsource';
  private source: EventSource | null = null;
  private watchdog: Watchdog | null = null;

  openStream(clientId: string, silence: number): Promise<void> {
    const Ctor = this.context.env.EventSource!;
    const fetchFn = this.context.http.fetchWithCookies();
    const source = new Ctor(streamUrl(this.context.url, clientId), { withCredentials: true, ...(fetchFn ? { fetch: fetchFn } : {}) } as EventSourceInit);
    this.source = source;
    const watchdog = new Watchdog(silence, () => this.drop(`the event stream was silent for ${silence} ms`, true));
    this.watchdog = watchdog;
    return new Promise<void>((resolve, reject) => {
      let live = false;
      source.addEventListener('connected', (event: Event) => {
        live = true;
        // A server that names its heartbeat (Perihelion) sends it as an event: watch from now.
        if (announcesHeartbeat((event as MessageEvent).data)) watchdog.arm();
        resolve();
      });
      // Heartbeats as events (an SSE comment is invisible here): from the first, silence is watched.
      source.addEventListener('heartbeat', () => {
        watchdog.arm();
        watchdog.alive();
      });
      source.onmessage = (event: MessageEvent) => {
        watchdog.alive();
        try {
          this.context.host.receive(parseBatch(String(event.data)));
        } catch {
          // A frame that is not JSON is not ours (a proxy's page): the line is unusable.
          this.drop('the event stream carried something that is not Bayeux', live);
        }
      };
      // EventSource would reconnect by itself, but a new line may need a new session (the old
      // one may be gone): the client decides, so the source is closed and the loss reported.
      source.onerror = () => {
        if (!live) reject(new Error('the event stream could not be opened'));
        this.drop('the event stream was interrupted', live);
      };
    });
  }

  private drop(reason: string, opened: boolean): void {
    if (!this.source) return;
    this.close();
    this.context.host.lost(reason, opened);
  }

  override close(): void {
    super.close();
    this.watchdog?.stop();
    this.source?.close();
    this.source = null;
  }
}

export class HttpStreamingTransport extends LongPolling {
  override readonly type: ConnectionType = 'http-streaming';
  private abort: AbortController | null = null;
  private watchdog: Watchdog | null = null;

  openStream(clientId: string, silence: number): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    return new Promise<void>((resolve, reject) => {
      let live = false;
      const fail = (reason: string): void => {
        if (!live) reject(new Error(reason));
        if (this.abort !== abort) return;
        this.close();
        this.context.host.lost(reason, live);
      };
      const watchdog = new Watchdog(silence, () => fail(`the HTTP stream was silent for ${silence} ms`));
      this.watchdog = watchdog;
      void (async () => {
        const response = await this.context.http.request(streamUrl(this.context.url, clientId), {
          headers: { Accept: 'application/x-ndjson' },
          signal: abort.signal,
        });
        if (!response.ok || !response.body) {
          // A 404 means the session is unknown: the client's next /meta/connect learns it and
          // handshakes again.
          await response.body?.cancel();
          return fail(`the HTTP stream was refused (${response.status})`);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffered = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return fail('the HTTP stream ended');
          // Any byte is a sign of life (heartbeats included).
          watchdog.alive();
          buffered += decoder.decode(value, { stream: true });
          let newline: number;
          while ((newline = buffered.indexOf('\n')) !== -1) {
            const line = buffered.slice(0, newline).trim();
            buffered = buffered.slice(newline + 1);
            if (line === '') continue;
            const batch = parseBatch(line);
            if (!live) {
              live = true;
              watchdog.arm();
              resolve();
            }
            // Heartbeats and the opening line are empty arrays.
            if (batch.length > 0 && this.abort === abort) this.context.host.receive(batch);
          }
        }
      })().catch((error: unknown) => fail(`the HTTP stream failed: ${(error as Error).message}`));
    });
  }

  override close(): void {
    super.close();
    this.watchdog?.stop();
    const abort = this.abort;
    this.abort = null;
    abort?.abort();
  }
}
