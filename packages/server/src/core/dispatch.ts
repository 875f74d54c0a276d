/**
 * The entry point every transport calls: `process(batch, context)` (core/server.ts) lands here.
 *
 * Each message passes, in this fixed order: shape check → the session it names (if this request
 * may speak for it, security/session-binding.ts) → incoming extensions → the handler for its
 * channel (the five meta channels in meta/, or a publish on a broadcast or /service channel in
 * publish.ts) → outgoing extensions on the reply. A refusal anywhere becomes an unsuccessful
 * reply carrying a Bayeux error string; nothing a client sends can throw out of `process`.
 */
import { META, bayeuxError, checkMessage, type Advice, type Message } from '@perihelion/protocol';
import { PerihelionError } from '../errors.js';
import type { ExtensionContext } from '../extensions/pipeline.js';
import { stampTimesync } from '../extensions/timesync.js';
import type { ProcessContext } from './contract.js';
import { connect } from './meta/connect.js';
import { disconnect } from './meta/disconnect.js';
import { handshake } from './meta/handshake.js';
import { subscribe, unsubscribe } from './meta/subscribe.js';
import { clientPublish } from './publish.js';
import { emitReply, refusal, reply as replyTo, type Reply } from './replies.js';
import type { ServerCore } from './server.js';
import type { ServerSession } from './session.js';

/**
 * Handles one batch of untrusted values and resolves to the serialised replies (and, after a
 * /meta/connect reply, the messages it carries), in order. On a push connection a held
 * /meta/connect is answered later through the connection, so the batch resolves without it.
 *
 * Synchronous, making no promise, for as long as nothing on the way answers with one: a
 * long-poll's connect, the most frequent request, needs no engine and no promise until it is
 * held, and every promise and turn of the microtask queue is paid per request. Once a message's
 * handling does answer with a promise, the rest of the batch waits for it, in order.
 */
export function dispatch(core: ServerCore, batch: readonly unknown[], context: ProcessContext): string[] | Promise<string[]> {
  const out: string[] = [];
  if (core.isClosed) {
    for (const value of batch) {
      // A connect is told to handshake (its session is gone); a handshake gets no advice, as
      // while draining (see DRAIN_RECONNECT_INTERVAL in meta/connect.ts).
      const advice: Advice | undefined = (value as Message | null)?.channel === META.handshake ? undefined : { reconnect: 'handshake', interval: 1000 };
      out.push(JSON.stringify(refusal(value, bayeuxError('serverError', [], 'server is shutting down'), advice)));
    }
    return out;
  }
  const handshakeAt = handshakeIndex(batch);
  // Bayeux §4.1.1: a handshake SHOULD be alone in its request, and the server MUST ignore any
  // other message sent with it: not acted on, not answered (neither CometD nor Faye sends one).
  // A client that asks for it (asksForBundle) may follow its handshake with messages for the
  // session it is about to get, saving the round trips of a connection's set-up.
  const facts: BatchFacts = { batchSize: batch.length, handshakeAt, bundle: handshakeAt === 0 && asksForBundle(batch[0]), bornHere: null };
  if (!core.isStarted) return core.ready.then(() => dispatchFrom(core, batch, 0, context, facts, out));
  return dispatchFrom(core, batch, 0, context, facts, out);
}

/** Where the batch's handshake is, or -1. */
function handshakeIndex(batch: readonly unknown[]): number {
  for (let i = 0; i < batch.length; i++) if ((batch[i] as Message | null)?.channel === META.handshake) return i;
  return -1;
}

/** Handles the batch's messages from `start` on (see dispatch). */
function dispatchFrom(core: ServerCore, batch: readonly unknown[], start: number, context: ProcessContext, facts: BatchFacts, out: string[]): string[] | Promise<string[]> {
  for (let i = start; i < batch.length; i++) {
    let value = batch[i];
    core.delivery.counters.messagesIn++;
    if (facts.handshakeAt !== -1 && i !== facts.handshakeAt) {
      // Only messages that name no session speak for the new one; the rest are ignored as above.
      const { bundle, bornHere } = facts;
      if (!bundle || bornHere === null || !isRecord(value) || value.clientId !== undefined || value.channel === META.handshake) continue;
      value = { ...value, clientId: bornHere.id };
    }
    let made: string | undefined | Promise<string | undefined>;
    try {
      made = handle(core, value, context, facts, out);
    } catch (error) {
      handlingFailed(core, value, error, out);
      continue;
    }
    if (made instanceof Promise) {
      const failed = value;
      return made.then(
        (id) => {
          bornOf(core, facts, id);
          return dispatchFrom(core, batch, i + 1, context, facts, out);
        },
        (error: unknown) => {
          handlingFailed(core, failed, error, out);
          return dispatchFrom(core, batch, i + 1, context, facts, out);
        },
      );
    }
    bornOf(core, facts, made);
  }
  return out;
}

/**
 * A handler threw: reported, and the batch goes on. The client is told the engine is away (503,
 * may be tried again: with a Redis that hangs the outcome is not known) or else of a server error.
 * The engine being away is reported as the server reports it (at most once per 10 s, counted):
 * while Redis hangs, every request that needs it fails, and a busy node would log each.
 */
function handlingFailed(core: ServerCore, value: unknown, error: unknown, out: string[]): void {
  const away = error instanceof PerihelionError && error.code === 'ERR_ENGINE_UNAVAILABLE';
  if (away) core.reportUnavailable(error);
  else core.reportError(error);
  out.push(JSON.stringify(refusal(value, away ? bayeuxError('unavailable', [], 'the cluster cannot be reached; try again') : bayeuxError('serverError'))));
}

/** Records the session a successful handshake of the batch made, for the messages bundled after it. */
function bornOf(core: ServerCore, facts: BatchFacts, made: string | undefined): void {
  if (made !== undefined) facts.bornHere = core.delivery.sessions.get(made) ?? null;
}

/**
 * A handshake carrying `ext.bundle: true` asks the server to act on the messages after it in the
 * same request (or WebSocket frame) as the new session's, in order, and to answer them all in
 * one response: a client sends handshake, first connect and subscribes at once, and is set up in
 * one round trip instead of three. The successful reply says `ext.bundle: true`; a server without
 * it ignores them (§4.1.1) and says nothing, and the client sends them again on their own.
 */
function asksForBundle(handshake: unknown): boolean {
  const ext = isRecord(handshake) ? handshake.ext : undefined;
  return isRecord(ext) && ext.bundle === true;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

interface BatchFacts {
  /** How many messages the request carried (a connect sharing an HTTP request is answered at once). */
  batchSize: number;
  /** Where the batch's handshake is, or -1. */
  handshakeAt: number;
  /** The batch starts with a handshake asking for a bundle (asksForBundle). */
  bundle: boolean;
  /** The session the handshake of this batch made: its bundled messages speak for it. */
  bornHere: ServerSession | null;
}

/**
 * Handles one message; answers the id of the session a successful handshake made. Synchronous
 * unless the extensions or the handler answer with a promise.
 */
function handle(core: ServerCore, value: unknown, context: ProcessContext, batch: BatchFacts, out: string[]): string | undefined | Promise<string | undefined> {
  const checked = checkMessage(value);
  if (!checked.ok) {
    const reply: Reply = { channel: checked.channel ?? '/meta/unknown', successful: false, error: checked.error };
    if (checked.id !== undefined) reply.id = checked.id;
    // §3.5: failed replies still carry the clientId they were sent with.
    const clientId = (value as { clientId?: unknown } | null)?.clientId;
    if (typeof clientId === 'string') reply.clientId = clientId;
    out.push(JSON.stringify(reply));
    return undefined;
  }
  const original = checked.message;
  // The CometD timesync extension measures from the moment the message arrived.
  if (original.ext !== undefined) stampTimesync(original, Date.now());
  // A session that does not accept this request is as unknown to it as one that never existed;
  // the session this very batch made does.
  const session = batch.bornHere !== null && original.clientId === batch.bornHere.id ? batch.bornHere : original.clientId !== undefined ? core.sessionFor(original.clientId, context) : null;
  const extensionContext: ExtensionContext = { session, transport: context };
  const incoming = core.extensions.incoming(original, extensionContext);
  if (incoming instanceof Promise) return incoming.then((message) => handleIncoming(core, original, message, session, extensionContext, context, batch, out));
  return handleIncoming(core, original, incoming, session, extensionContext, context, batch, out);
}

/** Handles a message as the incoming extensions left it (null: dropped by one). */
function handleIncoming(
  core: ServerCore,
  original: Message,
  message: Message | null,
  session: ServerSession | null,
  extensionContext: ExtensionContext,
  context: ProcessContext,
  batch: BatchFacts,
  out: string[],
): string | undefined | Promise<string | undefined> {
  const { extensions } = core;
  if (message === null || message.error !== undefined) {
    const error = message?.error ?? bayeuxError('channelForbidden', [original.channel], 'refused by an extension');
    return noSession(emitReply(extensions, { ...replyTo(original, false), error: String(error) }, extensionContext, out));
  }
  if (session && context.connection && message.channel !== META.connect) {
    // Faye opens its WebSocket while its connects still go over long-polling, and moves them
    // only once the held one returns. Answering that connect as soon as the client speaks over
    // the socket brings the next one over it, instead of an HTTP request held for `timeout`.
    session.releaseLongPoll();
  }
  switch (message.channel) {
    case META.handshake: {
      const answered = handshake(core, message, context);
      return answered instanceof Promise ? answered.then((reply) => handshaken(extensions, reply, batch, extensionContext, out)) : handshaken(extensions, answered, batch, extensionContext, out);
    }
    case META.connect:
      return noSession(connect(core, message, session, context, extensionContext, { batchSize: batch.batchSize, bundled: batch.bundle && session !== null && session === batch.bornHere }, out));
    case META.subscribe: {
      const answered = subscribe(core, message, session);
      return answered instanceof Promise ? answered.then((reply) => noSession(emitReply(extensions, reply, extensionContext, out))) : noSession(emitReply(extensions, answered, extensionContext, out));
    }
    case META.unsubscribe:
      return unsubscribe(core, message, session).then((reply) => noSession(emitReply(extensions, reply, extensionContext, out)));
    case META.disconnect:
      return disconnect(core, message, session).then((reply) => noSession(emitReply(extensions, reply, extensionContext, out)));
    default:
      return noSession(clientPublish(core, message, session, extensionContext, out));
  }
}

/** Emits a handshake's reply; answers the id of the session it made, if it made one. */
function handshaken(extensions: ServerCore['extensions'], reply: Reply, batch: BatchFacts, extensionContext: ExtensionContext, out: string[]): string | undefined | Promise<string | undefined> {
  if (batch.bundle && reply.successful) reply.ext = { ...reply.ext, bundle: true };
  const emitted = emitReply(extensions, reply, extensionContext, out);
  if (emitted instanceof Promise) return emitted.then(() => (reply.successful ? reply.clientId : undefined));
  return reply.successful ? reply.clientId : undefined;
}

/** The answer of a step that makes no session: nothing, now or once its promise settles. */
function noSession(step: void | Promise<void>): undefined | Promise<undefined> {
  return step instanceof Promise ? step.then(() => undefined) : undefined;
}
