/**
 * websocket: every frame is a JSON array of messages, in both directions (a single object
 * and `[]` are accepted too, BAYEUX.md A1/A2). Messages queued for a session bound to this socket
 * are pushed as soon as they are due, one frame for what one piece of work queued; the /meta/connect is still
 * held and answered when its timeout passes, as the CometD and Faye servers do.
 *
 * A socket may speak for a session handshaken elsewhere (Faye handshakes over HTTP and then
 * opens a WebSocket carrying that clientId; CometD reconnects reuse ids), so any frame binds the
 * sessions it names to this socket.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import { bayeuxError, decodeBatch, encodeBatch, type ErrorName } from '@perihelion/protocol';
import type { LineWatcher, ProcessContext, PushConnection, RequestFacts, TransportHost } from '../core/contract.js';
import { requestFacts } from '../http/request-facts.js';
import { SharedStrings } from '../http/shared-strings.js';
import { LineWatchers } from '../core/line-watchers.js';

/** How long a closed WebSocket's peer gets to answer the close frame before the socket is cut. */
const CLOSE_GRACE_MS = 1000;

/**
 * A WebSocket that brings no message for longer than a session can live without one is closed.
 * A session's held /meta/connect is answered at `timeout`, and a session whose client sends no
 * next one within `interval + maxInterval` is ended: a socket silent for longer than all three,
 * plus this margin for a slow network, carries no live session and holds a descriptor for nothing
 * (an idle or hostile client that answers pings and says nothing else).
 */
const IDLE_MARGIN_MS = 5_000;
/** How often the open WebSockets are checked for that (at most; twice per limit when it is shorter). */
const IDLE_SWEEP_MS = 5_000;

/**
 * One complete, unmasked text frame (RFC 6455 §5.2) carrying `serialised` as one JSON array.
 *
 * A publish reaches every subscriber in the same flush, each with the same single shared string:
 * its frame is built once and the one Buffer is written to every socket. Writing a whole frame to
 * the TCP socket is what `ws` itself does when, as here, compression is off.
 */
let lastPayload: string | null = null;
let lastFrame: Buffer = Buffer.alloc(0);
function frameOf(payload: string): Buffer {
  if (payload !== lastPayload) {
    lastFrame = textFrame(payload, true);
    lastPayload = payload;
  }
  return lastFrame;
}

/**
 * The frame of several messages. When publications come faster than a flush (a busy server, a
 * burst), every subscriber of a channel has the same messages queued: the same shared strings, in
 * the same order, written in the same flush. Their frame, too, is built once (measured: building
 * it per subscriber, the JSON array and its UTF-8 copy, cost a fan-out about 600 instructions per
 * delivery once batches formed). Batches past BATCH_FRAME_KEPT bytes are not kept: they are
 * replays, different for every session, and would be held until the next batch.
 */
const BATCH_FRAME_KEPT = 65_536;
let lastBatch: readonly string[] | null = null;
let lastBatchFrame: Buffer = Buffer.alloc(0);
function batchFrameOf(serialised: readonly string[]): Buffer {
  if (lastBatch !== null && sameStrings(serialised, lastBatch)) return lastBatchFrame;
  const frame = textFrame(encodeBatch(serialised));
  if (frame.length <= BATCH_FRAME_KEPT) {
    // A copy: the array is the caller's, to reuse as it likes.
    lastBatch = serialised.slice();
    lastBatchFrame = frame;
  }
  return frame;
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  // The same shared strings compare by reference; others by content, which differs early.
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The frame of `text`, or of `[text]` when `bracket` (the brackets written as bytes: no string built for them). */
function textFrame(text: string, bracket = false): Buffer {
  const extra = bracket ? 2 : 0;
  const length = Buffer.byteLength(text) + extra;
  const headerLength = length < 126 ? 2 : length < 65_536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(headerLength + length);
  frame[0] = 0x81; // FIN + opcode 1 (text)
  if (length < 126) frame[1] = length;
  else if (length < 65_536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  if (bracket) {
    frame[headerLength] = 0x5b; // [
    frame[headerLength + length - 1] = 0x5d; // ]
  }
  frame.write(text, headerLength + extra / 2, 'utf8');
  return frame;
}

/**
 * ws's WebSocket, made leaner for servers that hold tens of thousands of them.
 *
 * - Its listener table: EventEmitter makes it with a null prototype, which V8 keeps as a hash
 *   table (about 280 bytes once the four listeners below are in). Made as Node's own streams make
 *   theirs, an object literal naming the events it will hold, it stays a plain object (about 60
 *   bytes). None of ws's events is named like a property of Object.prototype.
 * - Its negotiated extensions: none, since compression is off (see the WebSocketServer below);
 *   one shared empty table rather than an object per socket, which ws only reads.
 */
const NO_EXTENSIONS = Object.freeze({});
export class LeanWebSocket extends WebSocket {
  constructor(...args: ConstructorParameters<typeof WebSocket>) {
    super(...args);
    const self = this as unknown as { _events: Record<string | symbol, unknown>; _extensions: object };
    const events: Record<string | symbol, unknown> = { error: undefined, message: undefined, close: undefined, pong: undefined };
    for (const key of Reflect.ownKeys(self._events)) events[key] = self._events[key];
    self._events = events;
    self._extensions = NO_EXTENSIONS;
  }
}

/**
 * Headers that describe the upgrade itself. A connection keeps its request's facts for as long as
 * it lives (extensions and the authenticator read them at every handshake on it), so its copy
 * leaves these out: with tens of thousands of connections, every string per connection counts.
 */
const UPGRADE_HEADERS = new Set(['connection', 'upgrade', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions']);

function withoutUpgradeHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const kept: IncomingHttpHeaders = {};
  for (const name in headers) {
    if (UPGRADE_HEADERS.has(name)) continue;
    const value = headers[name];
    kept[name] = typeof value === 'string' && SHARED_HEADERS.has(name) ? sharedStrings.share(value) : value;
  }
  return kept;
}

/**
 * Headers whose values most connections hold alike: every browser of one version sends the same
 * User-Agent, every page of a site the same Origin and Host (a browser's come to about 400 bytes),
 * kept once for all. Not cookies nor credentials: their values are each client's own, and must not
 * outlive its connection in the table.
 */
const SHARED_HEADERS = new Set(['host', 'user-agent', 'origin', 'accept-encoding', 'accept-language', 'cache-control', 'pragma']);
const sharedStrings = new SharedStrings();

/**
 * The WebSocket's listeners are shared functions that find their connection on the socket
 * (EventEmitter calls them with `this` set to it), not closures made per connection: with tens
 * of thousands of idle connections, every object per connection counts.
 */
const CONNECTION = Symbol('perihelion.connection');
type Tagged = WebSocket & { [CONNECTION]: WebSocketConnection };
const connectionOf = (socket: WebSocket): WebSocketConnection => (socket as Tagged)[CONNECTION];

function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  connectionOf(this).receive(data, isBinary);
}

function onPong(this: WebSocket): void {
  connectionOf(this).alive = true;
}

function onClose(this: WebSocket): void {
  connectionOf(this).closed();
}

/** The TCP socket under a WebSocket drained: its connection tells the sessions bound to it. */
function onRawDrain(this: Duplex): void {
  (this as Duplex & { [CONNECTION]: WebSocketConnection })[CONNECTION].drained();
}

// ws reports protocol errors (bad frames, oversized payloads) here and then closes the socket.
function onError(): void {}

class WebSocketConnection implements PushConnection {
  readonly transport = 'websocket' as const;
  alive = true;
  /**
   * When the last frame with a /meta/connect or /meta/handshake came, on the server's clock
   * (`wheel.time()`, a small integer kept in place, where a time since the epoch would be a
   * number object per connection): what a
   * live session sends at least every `timeout + interval`. Pings, pongs and other frames do not
   * count: a client sending garbage every 20 s would hold its socket for ever with no session.
   */
  lastMessageAt: number;
  /** The frames still being processed, in order; null when none is (the usual case). */
  private tail: Promise<void> | null = null;
  /** Frames received and not yet handled, and their text's length: bounded (see `wait`). */
  private waitingFrames = 0;
  private waitingChars = 0;
  /** Not read for now: too many frames wait to be handled (see `wait`). */
  private backlogged = false;
  /** Not read for now: replies wait to be sent, the client is not reading them (see `answer`). */
  private stalled = false;
  /** The socket is not being read, for either reason above. */
  private paused = false;
  /** The sessions bound to this line (usually one). */
  private readonly watchers = new LineWatchers();
  /** Whoever else asked to hear of its close (made when first needed: usually nobody). */
  private closeCallbacks: (() => void)[] | null = null;
  /** What every frame of this line is processed with: one object per line, not per frame (a held connect keeps it). */
  private readonly context: ProcessContext;

  constructor(
    private readonly socket: WebSocket,
    /** The TCP socket under the WebSocket: `ws` does not report 'drain', the socket does. */
    private readonly raw: Duplex,
    private readonly core: TransportHost,
    request: RequestFacts,
    /** The transport, which this connection leaves when it closes. */
    private readonly owner: WebSocketTransport,
  ) {
    this.context = { transport: 'websocket', request, connection: this };
    this.lastMessageAt = core.wheel.time();
    (socket as Tagged)[CONNECTION] = this;
    (raw as Duplex & { [CONNECTION]: WebSocketConnection })[CONNECTION] = this;
    socket.on('message', onMessage);
    socket.on('pong', onPong);
    socket.on('close', onClose);
    socket.on('error', onError);
    raw.on('drain', onRawDrain);
  }

  /** Where the connection comes from (`maxWebsocketsPerIp` counts by it). */
  get address(): string {
    return this.context.request.remoteAddress ?? 'unknown';
  }

  closed(): void {
    this.owner.left(this);
    this.watchers.closed(this);
    const callbacks = this.closeCallbacks;
    this.closeCallbacks = null;
    if (callbacks) for (const callback of callbacks) callback();
  }

  drained(): void {
    if (this.stalled) {
      this.stalled = false;
      this.readIfFree();
    }
    this.watchers.drained(this);
  }

  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  get congested(): boolean {
    // Frames are written to the TCP socket directly: what waits is in its buffer. The socket
    // reports a drain only once it asked for one (past its own 16 KB mark): below that a line is
    // never congested, or nothing would write it again. (The length first: it is usually 0.)
    return this.raw.writableLength > this.core.options.maxBufferedBytes && this.raw.writableNeedDrain;
  }

  sessionEnded(): void {
    // A WebSocket may speak for several sessions; it stays open.
  }

  watch(watcher: LineWatcher): void {
    if (this.socket.readyState === WebSocket.CLOSED) watcher.lineClosed(this);
    else this.watchers.add(watcher);
  }

  send(serialised: readonly string[]): void {
    if (!this.open) return;
    this.raw.write(serialised.length === 1 ? frameOf(serialised[0]!) : batchFrameOf(serialised));
  }

  sendOne(serialised: string): void {
    if (this.open) this.raw.write(frameOf(serialised));
  }

  onClose(callback: () => void): void {
    if (this.socket.readyState === WebSocket.CLOSED) callback();
    else (this.closeCallbacks ??= []).push(callback);
  }

  ping(): void {
    // A socket not read cannot show its pong; the idle sweep still ends one that stays so.
    if (this.paused) return;
    if (!this.alive) {
      this.socket.terminate();
      return;
    }
    this.alive = false;
    this.socket.ping();
  }

  close(code: number, reason: string): void {
    this.socket.close(code, reason);
    // A peer that stopped reading never answers the close frame; ws would wait 30 s for it.
    const socket = this.socket;
    setTimeout(() => {
      if (socket.readyState !== WebSocket.CLOSED) socket.terminate();
    }, CLOSE_GRACE_MS).unref();
  }

  receive(data: RawData, isBinary: boolean): void {
    this.alive = true;
    const { maxBatch, maxDepth } = this.core.options;
    if (isBinary) return this.reject('binary frames are not Bayeux; send JSON text');
    // ws hands over a Buffer (its default binaryType); decoding it directly avoids a copy.
    const text = Buffer.isBuffer(data) ? data.toString('utf8') : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
    const decoded = decodeBatch(text, { maxBatch, maxDepth });
    if (!decoded.ok) return this.reject(decoded.reason, decoded.error);
    // Frames are processed one after another, so a client's publishes keep their order even
    // when the engine is asynchronous; a held connect does not block this chain. A frame that
    // comes while none is being processed runs at once, making no promise unless it must wait.
    const messages = decoded.messages;
    if (carriesSession(messages)) this.lastMessageAt = this.core.wheel.time();
    const pending = this.tail === null ? this.run(messages) : this.tail.then(() => this.run(messages));
    if (pending !== undefined) this.wait(pending, text.length);
  }

  /** Processes one frame and sends its replies; a promise while they are not ready. */
  private run(messages: unknown[]): Promise<void> | undefined {
    try {
      const replies = this.core.process(messages, this.context);
      if (!(replies instanceof Promise)) return this.answer(replies, messages.length);
      return replies.then((settled) => this.answer(settled, messages.length)).catch(() => this.failed());
    } catch {
      return this.failed();
    }
  }

  /**
   * Keeps `pending` as the last frame being processed until it settles. Every frame waiting holds
   * its decoded messages, so what waits is bounded: past `maxPendingFrames` frames, or past
   * `maxRequestBytes` of their text, the socket is not read until half of that is handled. The
   * client meets TCP backpressure, as from any server slower than it; nothing is dropped.
   */
  private wait(pending: Promise<void>, chars: number): void {
    const { maxPendingFrames, maxRequestBytes } = this.core.options;
    this.waitingFrames++;
    this.waitingChars += chars;
    if (!this.backlogged && (this.waitingFrames > maxPendingFrames || this.waitingChars > maxRequestBytes)) {
      this.backlogged = true;
      this.readIfFree();
    }
    const tail: Promise<void> = pending.then(() => {
      this.waitingFrames--;
      this.waitingChars -= chars;
      if (this.backlogged && this.waitingFrames * 2 <= maxPendingFrames && this.waitingChars * 2 <= maxRequestBytes) {
        this.backlogged = false;
        this.readIfFree();
      }
      if (this.tail === tail) this.tail = null;
    });
    this.tail = tail;
  }

  /** Pauses or resumes reading the socket as `backlogged` and `stalled` say. */
  private readIfFree(): void {
    const hold = this.backlogged || this.stalled;
    if (hold === this.paused) return;
    this.paused = hold;
    if (hold) {
      this.core.counters.readsPaused++;
      // ws stops reading the TCP socket; what it already read still comes, then nothing.
      this.socket.pause();
    } else this.socket.resume();
  }

  /**
   * Replies go out whatever the line's congestion (a client waits for them); but a client that
   * does not read them must not make the server hold more of them: while they wait, its socket is
   * not read, until the line drains.
   */
  private answer(replies: string[], batchSize: number): undefined {
    if (replies.length > 0 || batchSize === 0) this.send(replies);
    this.stallIfCongested();
    return undefined;
  }

  private stallIfCongested(): void {
    if (this.stalled || !this.congested) return;
    this.stalled = true;
    this.readIfFree();
  }

  /**
   * process() fails only when the server cannot serve at all (its engine never started, already
   * reported): the frame gets an error, and later frames are still handled.
   */
  private failed(): undefined {
    this.reject('the server cannot handle requests now', 'serverError');
    return undefined;
  }

  private reject(reason: string, name: ErrorName = 'badRequest'): void {
    this.send([JSON.stringify({ channel: '/meta/unknown', successful: false, error: bayeuxError(name, [], reason) })]);
    this.stallIfCongested();
  }
}

export class WebSocketTransport {
  private readonly wss: WebSocketServer;
  private readonly connections = new Set<WebSocketConnection>();
  /** Open connections per remote address (`maxWebsocketsPerIp`); an address without any has no entry. */
  private readonly perAddress = new Map<string, number>();
  private pinger: NodeJS.Timeout | null = null;
  private readonly idleSweep: NodeJS.Timeout;

  constructor(private readonly core: TransportHost) {
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: core.options.maxRequestBytes,
      // Compression costs CPU per frame per subscriber and defeats shared payloads.
      perMessageDeflate: false,
      clientTracking: false,
      // (Typed for ws's client constructor; the server calls it as ws's own.)
      WebSocket: LeanWebSocket as unknown as typeof WebSocket,
    });
    const interval = core.options.pingInterval;
    if (interval > 0) {
      // One timer for all sockets: a socket that did not answer the previous ping is dropped.
      this.pinger = setInterval(() => {
        for (const connection of this.connections) connection.ping();
      }, interval);
      this.pinger.unref();
    }
    const { options } = core;
    const idleLimit = options.timeout + Math.max(0, options.interval) + options.maxInterval + IDLE_MARGIN_MS;
    this.idleSweep = setInterval(() => this.closeIdle(core.wheel.time() - idleLimit, idleLimit), Math.min(IDLE_SWEEP_MS, idleLimit / 2));
    this.idleSweep.unref();
  }

  /** Closes the sockets that brought no message since `before` (see IDLE_MARGIN_MS). */
  private closeIdle(before: number, idleLimit: number): void {
    for (const connection of this.connections) {
      if (connection.lastMessageAt >= before) continue;
      this.connections.delete(connection);
      // 1008, policy: a client that still wants a session opens another socket and handshakes.
      connection.close(1008, `no Bayeux message for ${Math.round(idleLimit / 1000)} s`);
    }
  }

  get size(): number {
    return this.connections.size;
  }

  /**
   * Whether a WebSocket from `address` may open now: fewer than `maxWebsocketsPerIp` are open from
   * it. Sessions are bounded per address by `maxSessionsPerIp`, but a socket needs no session, and
   * one without stays open until the idle sweep: without this an address could hold thousands.
   */
  admits(address: string): boolean {
    const limit = this.core.options.maxWebsocketsPerIp;
    return limit === 0 || (this.perAddress.get(address) ?? 0) < limit;
  }

  /** A connection closed (once: ws reports a close once): it no longer counts. */
  left(connection: WebSocketConnection): void {
    this.connections.delete(connection);
    const address = connection.address;
    const open = (this.perAddress.get(address) ?? 1) - 1;
    if (open > 0) this.perAddress.set(address, open);
    else this.perAddress.delete(address);
  }

  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const facts = requestFacts(req, this.core.proxies);
    facts.headers = withoutUpgradeHeaders(req.headers);
    // The path, when it is the whole URL (a query may carry a client's own credentials).
    if (!facts.url.includes('?')) facts.url = sharedStrings.share(facts.url);
    // No closure here may capture `req`: one living as long as the connection would keep the
    // whole upgrade request (about 1 KB) alive with it.
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, socket, facts));
  }

  private accept(ws: WebSocket, socket: Duplex, facts: RequestFacts): void {
    const connection = new WebSocketConnection(ws, socket, this.core, facts, this);
    this.connections.add(connection);
    const address = connection.address;
    this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
  }

  close(): void {
    if (this.pinger) clearInterval(this.pinger);
    clearInterval(this.idleSweep);
    // 1001 "going away": clients reconnect, to this server once it is back or to another one.
    for (const connection of this.connections) connection.close(1001, 'server shutting down');
    this.connections.clear();
    this.perAddress.clear();
    this.wss.close();
  }
}

/** Whether a frame's messages include what a session lives by: its connects (or its handshake). */
function carriesSession(messages: readonly unknown[]): boolean {
  for (const message of messages) {
    const channel = (message as { channel?: unknown } | null)?.channel;
    if (channel === '/meta/connect' || channel === '/meta/handshake') return true;
  }
  return false;
}
