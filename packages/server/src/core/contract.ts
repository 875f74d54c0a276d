/**
 * The contract between the transports and the server core. Transports turn wire traffic into
 * batches of untrusted values and call `process(batch, context)`; they know nothing about
 * channels. The context is also what security (session binding, authentication) and extensions
 * see of the request a message came in on.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { ConnectionType } from '@perihelion/protocol';
import type { ProxyTrust } from '../http/client-address.js';
import type { ClientCertificate } from '../http/tls.js';
import type { ResolvedOptions } from '../options.js';
import type { Counters } from './delivery.js';
import type { BrowserLines } from './browser-lines.js';
import type { DisconnectReason } from './events.js';
import type { TimerWheel } from './timer-wheel.js';

/** How a batch reached the server: a Bayeux connection type, or a local client in this process. */
export type Transport = ConnectionType | 'in-process';

/**
 * What a push line tells the sessions bound to it: methods of the session itself, so that binding
 * costs no closure per session and line (every idle WebSocket has a session bound to it).
 */
export interface LineWatcher {
  lineClosed(line: PushConnection): void;
  lineDrained(line: PushConnection): void;
  /**
   * Messages written to `line` that are known never to have reached it (the node holding the
   * real line was gone), in the order they were written: queued again, ahead of the rest.
   */
  lineReturned?(line: PushConnection, payloads: readonly string[]): void;
}

/** Facts about the HTTP request (or WebSocket upgrade) a batch came in on. */
export interface RequestFacts {
  headers: IncomingHttpHeaders;
  remoteAddress: string | undefined;
  url: string;
  /** The browser id (BAYEUX_BROWSER cookie) this request carried or was given. */
  browserId?: string;
  /** True when the request carried no browser id and was given `browserId` by this server (HTTP only: upgrades are given none). */
  browserIdIssued?: boolean;
  /** The client's certificate, verified against `tls.ca`, when the server's own listener asks for one (`tls.clientCertificates`). */
  clientCertificate?: ClientCertificate;
}

/**
 * A line the server can write to at any time (a WebSocket). Sessions bound to one get their
 * messages pushed as they are queued; the /meta/connect is still held and answered on timeout.
 */
export interface PushConnection {
  readonly transport: Transport;
  readonly open: boolean;
  /** Writes the serialised messages as one JSON array in one write. */
  send(serialised: readonly string[]): void;
  /** `send([serialised])` without the array: the common case of one message per flush. */
  sendOne(serialised: string): void;
  /**
   * True while more than `maxBufferedBytes` wait to be written to the network: the session keeps
   * its messages in its own bounded queue until the line drains, so a slow reader cannot grow
   * server memory without bound.
   */
  readonly congested: boolean;
  /** Calls `callback` once when the line closes. */
  onClose(callback: () => void): void;
  /**
   * Tells `watcher` (a session bound to the line) when the line closes and each time a congested
   * line has drained; a watcher given twice is told once.
   */
  watch(watcher: LineWatcher): void;
  /** The session this line serves has ended (`reason`: why): a line dedicated to it closes. */
  sessionEnded(reason?: DisconnectReason): void;
}

/**
 * What extensions are told of the transport a message came on (`ExtensionContext.transport`):
 * the same object for every message of one HTTP request or one WebSocket frame.
 */
export interface TransportFacts {
  /** The transport the batch arrived on. */
  readonly transport: Transport;
  /** The HTTP request (for a WebSocket, its upgrade request). */
  readonly request: RequestFacts;
}

/** What the core is told of the request or frame a batch came in; its fields past `TransportFacts` are the server's own. */
/** Told when the client gives up on a request before its answer (ProcessContext.onClientGone). */
export interface ClientGoneWatcher {
  clientGone(): void;
}

export interface ProcessContext extends TransportFacts {
  /** Present when replies and deliveries can be pushed (WebSocket). */
  connection?: PushConnection;
  /**
   * Registers a watcher told when the client gives up on the request before its answer
   * (long-polling closes the line): a held connect is then released. Asked for only when a
   * connect is held, so an ordinary request costs nothing. A watcher rather than a callback:
   * the held connect is one already, and a held long-poll keeps no closure for it.
   */
  onClientGone?(watcher: ClientGoneWatcher): void;
  /**
   * HTTP polling: where a connect held over this request is answered once it is released (its
   * reply and the messages it carries are the response). The connect then sets `answeredLater`,
   * and what `process` answers for the batch is not the response. It answers false when the client
   * is gone by then (its socket destroyed before the close was reported): the messages the
   * connect carried are queued again for the next connect. Without it, `process` waits
   * for the held connect and answers with its replies.
   *
   * Why: a held long-poll lives about as long as the publishes are apart, long enough for the
   * collector to move what waits for it to the old generation; a chain of promises waiting for
   * it, settled with the new reply at release, keeps every object made for the answer alive
   * through the next collections too. A callback, like a push line's, keeps none of that.
   */
  answerLater?(replies: string[]): boolean;
  /** Set by a connect held through `answerLater`. */
  answeredLater?: boolean;
  /** Forwarded by the node the client talks to (core/forwarding.ts): processed here, never forwarded again. */
  forwarded?: boolean;
}

/** What a transport needs of the core: its limits (the options) and the one entry point. */
export interface TransportHost {
  readonly options: ResolvedOptions;
  /** Who the client behind a request is, past the reverse proxies the options trust. */
  readonly proxies: ProxyTrust;
  /** The server's running totals; a transport counts what only it sees (a WebSocket not read for a while). */
  readonly counters: Counters;
  /** The lines each browser holds open, against `maxSessionsPerBrowser` (a stream is one). */
  readonly browserLines: BrowserLines;
  /** The server's deadlines and its clock (`wheel.time()`: whole ms, small enough to keep in place per connection). */
  readonly wheel: TimerWheel;
  /**
   * Handles one batch of untrusted values and resolves to the serialised replies (and, after a
   * /meta/connect reply, the messages it carries), in order. Never rejects for client input.
   * Answers the replies themselves, with no promise, when nothing on the way had to wait.
   */
  process(batch: readonly unknown[], context: ProcessContext): string[] | Promise<string[]>;
}
