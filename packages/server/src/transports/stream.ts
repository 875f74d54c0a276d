/**
 * The machinery shared by the two streamed transports (Server-Sent Events and HTTP streaming):
 * an HTTP response kept open as a push line for one session. Each transport only supplies its
 * framing (sse.ts, http-streaming.ts).
 *
 * - The client opens `GET <mount>/<clientId>` after handshaking; messages from the client still
 *   travel by POST (long-polling requests), answered at once.
 * - Proxy-proof: `Cache-Control: no-cache`, `X-Accel-Buffering: no` (nginx), optional padding at
 *   the start, a first frame sent at once (a client that does not see it soon is behind a
 *   buffering intermediary and should fall back to long-polling), and a no-op frame on lines idle
 *   for `heartbeat` ms (the Lift text's tunable idle no-op) so proxies do not cut them.
 * - A second stream for the same session replaces the first, which is ended: the newest line is
 *   the one the client listens on (an EventSource reconnecting after a network cut).
 * - A browser's streams count against `maxSessionsPerBrowser` with its held polls
 *   (core/browser-lines.ts): past it a stream is refused (429), and the client long-polls.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { encodeBatch, type StreamedConnectionType } from '@perihelion/protocol';
import type { LineWatcher, PushConnection, RequestFacts, TransportHost } from '../core/contract.js';
import type { DisconnectReason } from '../core/events.js';
import { LineWatchers } from '../core/line-watchers.js';
import { releaseOnEnd, type ServerSession, type Session } from '../core/session.js';
import { sendBatchError } from '../http/responses.js';

export interface Framer {
  readonly transport: StreamedConnectionType;
  readonly contentType: string;
  /** Written once when the stream opens, after the padding; `heartbeat` is the longest silence to come, ms. */
  opening(session: Pick<Session, 'id'>, heartbeat: number): string;
  /** `padding` bytes of whatever this framing ignores. */
  padding(bytes: number): string;
  /** One batch of messages; `sequence` counts batches on this stream from 1. */
  batch(json: string, sequence: number): string;
  /** The idle no-op. */
  heartbeat(): string;
  /** Tells a client that reconnects by itself (EventSource) how soon to come back, if the framing can. */
  comeBackIn?(ms: number): string;
  /** The last batch of a stream whose session ended for good: one an EventSource does not reconnect after. */
  farewell(json: string): string;
}

/**
 * A server shutting down tells EventSource to come back between these many ms and twice as many,
 * at random (rather than its usual `retry`, 5 s): the restarted server, or another node, takes it
 * soon, and not every client in the same moment.
 */
const SHUTDOWN_COMEBACK_MS = 1000;

/**
 * The shared timer ticks this many times per `heartbeat`, and a line idle for all but one of them
 * gets its no-op: so no line is ever silent for longer than `heartbeat` ms (which clients may take
 * as a deadline), without reading the clock on every write.
 */
const TICKS_PER_HEARTBEAT = 4;

class StreamConnection implements PushConnection {
  readonly transport: StreamedConnectionType;
  /** Set when something was written since the last tick. */
  active = true;
  private idleTicks = 0;
  private sequence = 0;
  private readonly watchers = new LineWatchers();
  /** Gives back the browser's count of lines (maxSessionsPerBrowser) once the stream ends. */
  private uncount: (() => void) | null = null;
  /** The browser it is counted against, while it is. */
  browser: string | undefined;
  /** The session it serves, once started. */
  clientId: string | undefined;

  constructor(
    private readonly res: ServerResponse,
    private readonly framer: Framer,
    private readonly maxBufferedBytes: number,
  ) {
    this.transport = framer.transport;
  }

  get open(): boolean {
    return !this.res.destroyed && !this.res.writableEnded;
  }

  get congested(): boolean {
    // Only once the response asked for a drain (past its own 16 KB mark) is one reported.
    return this.res.writableLength > this.maxBufferedBytes && this.res.writableNeedDrain;
  }

  send(serialised: readonly string[]): void {
    this.write(this.framer.batch(encodeBatch(serialised), ++this.sequence));
  }

  sendOne(serialised: string): void {
    this.write(this.framer.batch(`[${serialised}]`, ++this.sequence));
  }

  write(chunk: string): void {
    if (!this.open) return;
    this.active = true;
    this.res.write(chunk);
  }

  tick(): void {
    if (this.active) this.idleTicks = 0;
    else if (++this.idleTicks >= TICKS_PER_HEARTBEAT - 1) {
      this.write(this.framer.heartbeat());
      this.idleTicks = 0;
    }
    this.active = false;
  }

  onClose(callback: () => void): void {
    if (!this.open) callback();
    else this.res.once('close', callback);
  }

  /**
   * A stream has no held connect to carry why its session ended, and its client may reconnect by
   * itself (EventSource): a server shutting down tells it to come back soon; a session ended for
   * good (disconnected by the server or the client, expired: `releaseOnEnd`) sends the reply a held
   * connect would have had, `reconnect: "none"`, so that the client stays away rather than
   * handshaking again on its next keep-alive connect. An expired token or an overflowed queue says nothing
   * here: the client's next request learns that its session is gone, and handshakes.
   */
  sessionEnded(reason?: DisconnectReason): void {
    const release = reason === undefined ? undefined : releaseOnEnd(reason);
    if (release === 'shutdown' && this.framer.comeBackIn) this.write(this.framer.comeBackIn(SHUTDOWN_COMEBACK_MS * (1 + Math.random())));
    if (release === 'disconnected' && this.clientId !== undefined) {
      this.write(this.framer.farewell(JSON.stringify([{ channel: '/meta/connect', clientId: this.clientId, successful: true, advice: { reconnect: 'none' } }])));
    }
    this.end();
  }

  watch(watcher: LineWatcher): void {
    if (!this.watchers.add(watcher)) return;
    this.res.on('drain', () => this.watchers.drained(this));
    this.onClose(() => this.watchers.closed(this));
  }

  /** Counts this stream as one of `browser`'s lines until it ends, however it ends. */
  countAgainst(browser: string, uncount: () => void): void {
    this.browser = browser;
    this.uncount = uncount;
    this.res.once('close', () => this.uncounted());
  }

  end(): void {
    // Given back at once: a stream replacing this one must not find its browser's count still full.
    this.uncounted();
    if (this.open) this.res.end();
  }

  private uncounted(): void {
    const uncount = this.uncount;
    this.uncount = null;
    this.browser = undefined;
    uncount?.();
  }
}

export class StreamTransport {
  /** The streams started, by the session each serves: one per session on a node. */
  private readonly connections = new Map<string, StreamConnection>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly core: TransportHost) {
    // One timer for every stream (see TICKS_PER_HEARTBEAT).
    this.timer = setInterval(() => {
      for (const connection of this.connections.values()) connection.tick();
    }, core.options.heartbeat / TICKS_PER_HEARTBEAT);
    this.timer.unref();
  }

  get size(): number {
    return this.connections.size;
  }

  /**
   * Opens a stream for `session`, replacing any stream it already has; refuses it (429) when its
   * browser holds `maxSessionsPerBrowser` lines already.
   */
  open(req: IncomingMessage, res: ServerResponse, session: ServerSession, framer: Framer, facts: RequestFacts): void {
    const previous = session.connection;
    if (previous instanceof StreamConnection) previous.end();
    // A poll the session still holds gives way: from now on the stream is its line.
    if (this.core.browserLines.browserOf(facts) !== undefined) session.releaseLongPoll();
    const connection = this.line(res, framer, facts, session.id);
    if (!connection) return;
    this.start(req, res, connection, framer, session.id);
    session.bind(connection);
  }

  /**
   * A stream not started yet (for a session another node holds, started once that node agrees:
   * core/forwarding.ts), counted as one of its browser's lines; null when its browser holds
   * `maxSessionsPerBrowser` lines already, and it was refused (429).
   */
  line(res: ServerResponse, framer: Framer, facts: RequestFacts, clientId: string): (PushConnection & { end(): void }) | null {
    const { browserLines } = this.core;
    const browser = browserLines.browserOf(facts);
    if (browser !== undefined && !browserLines.admit(browser)) {
      // A session's new stream replaces its stream here once started (`start`): past the limit
      // only until then. (Ended now, the old one could be ended by anyone who names the session,
      // before its owner, another node for a forwarded one, agrees.)
      if (this.connections.get(clientId)?.browser !== browser) {
        this.core.counters.pastBrowserLimit++;
        const { maxSessionsPerBrowser } = this.core.options;
        sendBatchError(res, 429, 'rateLimited', `this browser holds ${maxSessionsPerBrowser} lines to this server already (maxSessionsPerBrowser): long-poll instead`);
        return null;
      }
      browserLines.enter(browser);
    }
    const connection = new StreamConnection(res, framer, this.core.options.maxBufferedBytes);
    if (browser !== undefined) connection.countAgainst(browser, () => browserLines.leave(browser));
    return connection;
  }

  /** Writes the stream's head and opening, and keeps it alive from then on. */
  start(req: IncomingMessage, res: ServerResponse, connection: PushConnection, framer: Framer, clientId: string): void {
    const stream = connection as StreamConnection;
    stream.clientId = clientId;
    req.socket.setNoDelay(true);
    req.socket.setKeepAlive(true);
    res.writeHead(200, {
      'Content-Type': framer.contentType,
      'Cache-Control': 'no-cache, no-store, no-transform',
      'X-Accel-Buffering': 'no',
      Connection: 'keep-alive',
    });
    const { streamPadding } = this.core.options;
    stream.write((streamPadding > 0 ? framer.padding(streamPadding) : '') + framer.opening({ id: clientId }, this.core.options.heartbeat));
    const previous = this.connections.get(clientId);
    if (previous !== undefined && previous !== stream) previous.end();
    this.connections.set(clientId, stream);
    stream.onClose(() => {
      if (this.connections.get(clientId) === stream) this.connections.delete(clientId);
    });
  }

  close(): void {
    clearInterval(this.timer);
    for (const connection of this.connections.values()) connection.end();
    this.connections.clear();
  }
}
