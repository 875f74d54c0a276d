/**
 * /meta/connect: the client's line for messages (Bayeux §Connect, BAYEUX.md A18–A28).
 *
 * - The request MUST contain channel, clientId and connectionType; it MAY contain ext and id. The
 *   reply MUST contain channel and successful; it MAY contain error, advice, ext, clientId and id.
 * - A client has one connect outstanding at a time. The server holds it until a message is due or
 *   `timeout` passes, and answers it at once when the client asks for timeout 0, when it is the
 *   session's first connect (unless it came in a bundled set-up on a WebSocket, whose handshake
 *   reply in the same frame already told the client it is connected), when it shares an HTTP
 *   request with other messages (on a WebSocket the other replies need not wait for it), or when
 *   messages already wait (A20). A newer connect for the same session releases the held one,
 *   flagged `multiple-clients` (A22).
 * - The messages a connect carries travel in the same array, after its reply (A23).
 * - Without a connect for `interval + maxInterval` the session SHOULD be ended as if it had sent
 *   /meta/disconnect (A25): ServerSession.scheduleExpiry.
 * - A successful reply MUST carry reconnect "retry" or "none": CometD throws on anything else (A28).
 */
import { META, bayeuxError, isStreamedConnectionType, type Advice, type ConnectionType, type Message } from '@perihelion/protocol';
import type { ExtensionContext } from '../../extensions/pipeline.js';
import type { ClientGoneWatcher, ProcessContext, PushConnection } from '../contract.js';
import { advice as heldAdvice, emitReply, refusal, reply as replyTo, unknownClient } from '../replies.js';
import type { ServerCore } from '../server.js';
import type { HeldConnect, Release, ServerSession } from '../session.js';

/**
 * While the server drains (SIGTERM, `close()`), every /meta/connect, the held ones at once and any
 * that arrives meanwhile, is answered `successful: true` with advice `{reconnect: "retry",
 * interval: DRAIN_RECONNECT_INTERVAL}`: connect again in a second. A client that still has
 * messages waiting collects them with that connect (the drain waits for it); once this server is
 * gone, the connect fails and the client retries it with its own backoff until the restarted
 * server (or another node) answers its clientId with 402 and `reconnect: "handshake"`, and it
 * starts a new session there. Checked against the clients' source (npm cometd 9.0.0, faye 1.4.3):
 *
 * - Not `reconnect: "handshake"` on a successful reply: CometD accepts only "retry" or "none" there
 *   and throws "Unrecognized advice action handshake" (cometd/Client.js:1181-1192). The reply has
 *   been matched, nothing is scheduled, and the WebSocket's 1001 close then finds no request
 *   outstanding to fail (cometd/WebSocketTransport.js:346-385): the client never connects again.
 * - "retry": CometD connects again after advice.interval (Client.js:1183-1185, 576-581); a connect
 *   that fails (refused, socket closed) is retried with a backoff growing by 1 s
 *   (Client.js:1205-1213, 1010-1011, 1051-1052), and the 402 makes it handshake
 *   (Client.js:1194-1198, 1023-1027, 1048-1049). Its WebSocket transport stays in use after the
 *   1001 close because it had connected once (WebSocketTransport.js:353). Faye connects again
 *   after advice.interval (faye/src/protocol/client.js:166, 373-380), resends a failed connect every
 *   `retry` seconds (faye/src/protocol/dispatcher.js:147-176; on a closed WebSocket
 *   faye/src/transport/web_socket.js:67-86), and handshakes on the 402's advice
 *   (client.js:356-365), subscribing again by itself (client.js:121).
 * - An unsuccessful reply with `reconnect: "handshake"` would also bring both clients back
 *   (Client.js:1194-1198; faye client.js:356-365), but it would abandon the messages still waiting
 *   here, and CometD would report the connection as failed while the server is merely draining.
 *
 * A handshake during the drain (or after it, until the listener closes) is refused without advice.
 * CometD then takes the action "handshake" and tries again with its backoff, 0 s, 1 s, 2 s, …
 * (Client.js:1130-1136, 980-1002, 1048-1049); Faye tries again every `retry` seconds, 5 by default
 * (client.js:124-128), until the restarted server takes it. Not with `reconnect: "handshake"`: on
 * a refused handshake that makes Faye start a second handshake of its own (client.js:356-365, 373-380,
 * 141-146) and, once that one succeeds, drop the first one's retry (client.js:98), and with it
 * the subscribe or publish the application made before its first handshake: that subscription is
 * never made on the restarted server.
 */
const DRAIN_RECONNECT_INTERVAL = 1000;

type ConnectCore = Pick<ServerCore, 'options' | 'isDraining' | 'delivery' | 'extensions' | 'reportError' | 'browserLines'>;

/** Where the connect came from: what decides whether it may be held. */
export interface ConnectBatch {
  /** How many messages its request (or frame) carried. */
  batchSize: number;
  /** It came after a handshake asking for a bundle (dispatch.ts), for the session that handshake made. */
  bundled: boolean;
}

/**
 * Answers a connect, now or once released; on a push line a held connect is answered through the
 * line. Synchronous unless it is held over HTTP (or an extension answers with a promise).
 * `extensionContext` is the one its incoming extensions saw: `session` and `context`.
 */
export function connect(
  core: ConnectCore,
  message: Message,
  session: ServerSession | null,
  context: ProcessContext,
  extensionContext: ExtensionContext,
  batch: ConnectBatch,
  out: string[],
): void | Promise<void> {
  const { options, extensions } = core;
  if (!session) return emitReply(extensions, unknownClient(message), extensionContext, out);
  const type = message.connectionType;
  if (typeof type !== 'string' || !(options.transports as string[]).includes(type)) {
    const error =
      typeof type !== 'string'
        ? bayeuxError('missingParameter', ['connectionType'])
        : bayeuxError('connectionTypeMismatch', [type], `this server offers ${options.transports.join(', ')}`);
    return emitReply(extensions, { ...replyTo(message, false), error, advice: { reconnect: 'handshake', interval: 0 } }, extensionContext, out);
  }
  session.connectionType = type as ConnectionType;
  if (context.connection) session.bind(context.connection);
  const acknowledged = message.ext?.ack;
  if (session.ack && typeof acknowledged === 'number' && Number.isSafeInteger(acknowledged)) {
    // What the client did not receive goes out again, before anything newer.
    const resend = session.ack.acknowledge(acknowledged);
    core.delivery.counters.resent += resend.length;
    session.resend(resend);
  }

  // Streamed types (Faye's eventsource, http-streaming) carry messages on their stream; their
  // connects are answered at once and only keep the session alive (BAYEUX.md A46).
  const streamed = isStreamedConnectionType(type);
  const advice: Advice = streamed ? { reconnect: 'retry', interval: options.timeout, timeout: 0 } : heldAdvice(options);
  const clientTimeout = typeof message.advice?.timeout === 'number' && message.advice.timeout >= 0 ? message.advice.timeout : Infinity;
  const timeout = Math.min(options.timeout, clientTimeout);
  const pushing = session.pushing;
  // Answer at once (BAYEUX.md A20): a streamed type, the client asked for timeout 0, this is
  // the first connect (so the client learns it is connected), the connect shares an HTTP request
  // with other messages, or messages are already waiting with no push line to carry them.
  // The first connect of a bundled set-up on a push line is held at once: the handshake's reply
  // in the same frame tells the client it is connected, and the set-up costs one frame each way
  // (docs/protocol.md). A client that wants it answered at once says timeout 0.
  if (core.isDraining) {
    // Shutting down: hand over what is waiting at once, and have the client connect again a
    // second later (here while the drain lasts, then the restarted server or another node).
    session.release('superseded');
    return finishConnect(core, message, session, { reason: 'shutdown', events: pushing ? [] : session.takeQueued() }, advice, extensionContext, out);
  }
  // Sharing a request matters over HTTP only: on a push line the other replies go out at once
  // and the held connect is answered later through the line.
  const sharesRequest = batch.batchSize > 1 && !context.connection;
  const firstToAnswer = !session.connected && !(batch.bundled && context.connection);
  if (streamed || timeout === 0 || firstToAnswer || sharesRequest || (session.queue.length > 0 && !pushing)) {
    session.release('superseded');
    const events = pushing ? [] : session.takeQueued();
    return finishConnect(core, message, session, { reason: 'message', events }, advice, extensionContext, out);
  }
  if (context.connection) {
    session.hold(timeout, new PushedConnect(core, message.id, session, context, context.connection));
    return;
  }
  // A browser's polls past maxSessionsPerBrowser are answered at once (browser-lines.ts).
  const browser = core.browserLines.browserOf(context.request);
  if (browser !== undefined) {
    // Its own earlier poll, if one is still held, gives way first: it is not another tab's.
    session.release('superseded');
    if (!core.browserLines.admit(browser)) {
      core.delivery.counters.pastBrowserLimit++;
      const pastLimit: Advice = { ...advice, interval: options.multiSessionInterval, 'multiple-clients': true };
      return finishConnect(core, message, session, { reason: 'message', events: session.takeQueued() }, pastLimit, extensionContext, out);
    }
  }
  if (context.answerLater) {
    context.answeredLater = true;
    const held = new PolledConnect(core, message, session, advice, context, browser);
    session.hold(timeout, held);
    // The client gave up on this request (closed the socket): answer nothing to it, and leave
    // the queue for the next connect.
    context.onClientGone?.(held);
    return;
  }
  // Long-polling without a callback (a batch forwarded from another node): what `process`
  // answers is the response, once the connect is released.
  const released = new Promise<Release>((resolve) => {
    let answered = false;
    session.hold(timeout, {
      connection: undefined,
      answer: (release) => {
        answered = true;
        if (browser !== undefined) core.browserLines.leave(browser);
        resolve(release);
      },
    });
    // The client gave up on this request (closed the socket): answer nothing to it, and leave
    // the queue for the next connect. Only while this connect is the one held: once answered,
    // a later close must not release a newer connect.
    context.onClientGone?.({
      clientGone: () => {
        if (!answered) session.release('superseded');
      },
    });
  });
  return released.then((release) => finishConnect(core, message, session, release, advice, extensionContext, out));
}

/**
 * A long-poll's connect, held: once released, its reply and the messages it carries are written
 * through the request's `answerLater` (see ProcessContext.answerLater for why no promise waits
 * for it). A record rather than closures: a server with many long-polling clients holds one
 * for each, and what they keep is copied by every collection while they wait.
 */
class PolledConnect implements HeldConnect, ClientGoneWatcher {
  readonly connection = undefined;
  private answered = false;

  constructor(
    private readonly core: ConnectCore,
    private readonly message: Message,
    private readonly session: ServerSession,
    private readonly advice: Advice,
    private readonly context: ProcessContext,
    /** The browser it counts against (maxSessionsPerBrowser), if any. */
    private readonly browser: string | undefined,
  ) {}

  answer(release: Release): void {
    this.answered = true;
    if (this.browser !== undefined) this.core.browserLines.leave(this.browser);
    const { core, message, session } = this;
    const out: string[] = [];
    const finished = finishConnect(core, message, session, release, this.advice, { session, transport: this.context }, out);
    if (!(finished instanceof Promise)) return this.send(out, release);
    finished.then(
      () => this.send(out, release),
      (error: unknown) => {
        // An outgoing extension failed: reported, and the client told, as dispatch does; the
        // messages the connect carries still go, after the refusal, rather than being lost.
        core.reportError(error);
        this.send([JSON.stringify(refusal(message, bayeuxError('serverError'))), ...release.events], release);
      },
    );
  }

  /** Only while this connect is the one held: once answered, a later close must not release a newer connect. */
  clientGone(): void {
    if (!this.answered) this.session.release('superseded');
  }

  /**
   * A client gone before its answer could be written: what it would have carried waits for its
   * next connect (with the ack extension, the extension resends it instead).
   */
  private send(replies: string[], release: Release): void {
    if (!this.context.answerLater!(replies) && this.session.ack === null) this.session.resend(release.events);
  }
}

/**
 * A connect held on a push line (WebSocket): its reply, and what it carries, go out through the
 * line. Every idle session keeps one, so it keeps only what its reply needs: the request's id
 * (its clientId is the session's), not the request, and the line's own context, not one made for
 * this connect. Its advice is made when it is answered.
 */
class PushedConnect implements HeldConnect {
  constructor(
    private readonly core: ConnectCore,
    private readonly id: Message['id'],
    private readonly session: ServerSession,
    private readonly transport: ProcessContext,
    readonly connection: PushConnection,
  ) {}

  answer(release: Release): void {
    const later: string[] = [];
    const { session } = this;
    const request: Message = { channel: META.connect, clientId: session.id };
    if (this.id !== undefined) request.id = this.id;
    // Held, so not a streamed type (those are answered at once): the advice of a held connect.
    const finished = finishConnect(this.core, request, session, release, heldAdvice(this.core.options), { session, transport: this.transport }, later);
    if (finished instanceof Promise) void finished.then(() => this.send(later));
    else this.send(later);
  }

  private send(replies: string[]): void {
    if (replies.length > 0) this.connection.send(replies);
  }
}

/**
 * The reply to a connect once it is released, and the messages it carries after it. Synchronous
 * unless an outgoing extension answers with a promise.
 */
function finishConnect(core: ConnectCore, message: Message, session: ServerSession, release: Release, advice: Advice, context: ExtensionContext, out: string[]): void | Promise<void> {
  const { options } = core;
  const reply = replyTo(message, true);
  if (release.reason === 'token-expired') {
    reply.successful = false;
    reply.error = bayeuxError('unauthorized', [], 'session ended: token expired');
    reply.advice = { reconnect: 'handshake', interval: 0 };
  } else if (release.reason === 'slow-consumer') {
    reply.successful = false;
    reply.error = bayeuxError('serverError', [], `session ended: more than ${options.maxQueue} messages waited for it; handshake again and recover`);
    reply.advice = { reconnect: 'handshake', interval: 0 };
  } else if (release.reason === 'disconnected') reply.advice = { reconnect: 'none' };
  // Draining: see DRAIN_RECONNECT_INTERVAL for why this is "retry" and not "handshake".
  else if (release.reason === 'shutdown') reply.advice = { ...advice, reconnect: 'retry', interval: DRAIN_RECONNECT_INTERVAL };
  // A newer connect took this one's place: answered at once, flagged with the spec's
  // multiple-clients advice (two lines for one session usually mean two tabs or a retry).
  else if (release.reason === 'superseded') reply.advice = { ...advice, 'multiple-clients': true };
  else reply.advice = advice;
  if (session.ack && reply.successful) reply.ext = { ...reply.ext, ack: session.ack.close() };
  if (!session.ended) {
    session.connected = true;
    session.scheduleExpiry((advice.interval ?? 0) + options.maxInterval);
  }
  const emitted = emitReply(core.extensions, reply, context, out);
  if (emitted instanceof Promise) return emitted.then(() => carry(out, release.events));
  carry(out, release.events);
}

/** The messages a connect's reply carries, after it (A23). */
function carry(out: string[], events: readonly string[]): void {
  for (const event of events) out.push(event);
}
