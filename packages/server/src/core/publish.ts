/**
 * The publish path: a message from a client (or the server) on its way to the engine.
 *
 * From a client, in this order: the channel (never /meta, never a pattern), the session, `data`
 * present (Bayeux §Publish: "MUST contain channel and data"), not while draining, the session's
 * publish rate, a resend already published (same id, same session), the security policy
 * (publish, and create when nobody subscribes yet), then `ext.token` and `ext.position` removed
 * and the size checked. A /service message goes to the in-process listeners only, whose result
 * is the answer; any other is prepared (outgoing extensions, serialised once) and handed to the
 * engine, which gives it its position and delivers it (delivery.ts) on every node.
 */
import { bayeuxError, channelProblem, isMeta, isService, isWildcard, serialiseExtLast, type Message } from '@perihelion/protocol';
import type { Publication } from '../engine/engine.js';
import { PerihelionError } from '../errors.js';
import type { ExtensionContext, ExtensionPipeline } from '../extensions/pipeline.js';
import { emitReply, reply, unknownClient } from './replies.js';
import { RecentIds } from './recent-ids.js';
import type { ServerCore } from './server.js';
import type { ServerSession, Session } from './session.js';

/** Publishes refused in a row for exceeding the rate before the session is ended as abusive. */
const MAX_REFUSED_PUBLISHES = 100;

type PublishCore = Pick<ServerCore, 'options' | 'isDraining' | 'delivery' | 'security' | 'engine' | 'extensions' | 'listeners' | 'events' | 'load'>;

/** A broadcast or /service message from a client; its reply (and a remote call's answer) go to `out`. */
export async function clientPublish(core: PublishCore, message: Message, session: ServerSession | null, context: ExtensionContext, out: string[]): Promise<void> {
  const { options, extensions } = core;
  const { channel } = message;
  const fail = (error: string): void | Promise<void> => emitReply(extensions, { ...reply(message, false), error }, context, out);
  if (isMeta(channel)) return fail(bayeuxError('channelForbidden', [channel]));
  const problem = channelProblem(channel, { allowWildcard: false, maxLength: options.maxChannelLength });
  if (problem) {
    const detail = isWildcard(channel) ? 'cannot publish to a wildcard pattern' : problem;
    return fail(bayeuxError('channelInvalid', [channel], detail));
  }
  if (!session) return emitReply(extensions, unknownClient(message), context, out);
  if (message.data === undefined) return fail(bayeuxError('missingParameter', ['data']));
  // Nothing is acknowledged that the server may not live to deliver.
  if (core.isDraining) return fail(bayeuxError('serverError', [channel], 'server is shutting down'));
  const overloaded = core.load.refusesPublishes();
  if (overloaded) return fail(bayeuxError('overloaded', [channel], overloaded));
  if (session.publishBucket && !session.publishBucket.take()) {
    // Persistent flooding past the refusals is abuse: the session is ended.
    if (++session.refusedPublishes >= MAX_REFUSED_PUBLISHES) core.delivery.end(session, 'abuse');
    return fail(bayeuxError('rateLimited', [channel], `more than ${options.publishRate} publishes per second`));
  }
  session.refusedPublishes = 0;
  // A resend of a publish already accepted (same id, same session) is acknowledged again and
  // not published again. The id is remembered before the checks below, which may await, so a
  // resend arriving meanwhile is recognised too; a refusal forgets it.
  const dedupKey = message.id !== undefined && options.publishDedup > 0 && !isService(channel) ? String(message.id) : null;
  if (dedupKey !== null) {
    session.recentPublishes ??= new RecentIds(options.publishDedup);
    if (session.recentPublishes.has(dedupKey)) {
      core.delivery.counters.duplicatePublishes++;
      return emitReply(extensions, reply(message, true), context, out);
    }
    session.recentPublishes.add(dedupKey);
  }
  const refuse = (error: string): void | Promise<void> => {
    if (dedupKey !== null) session.recentPublishes?.delete(dedupKey);
    return fail(error);
  };
  try {
    const refused = (await core.security.policy.check('publish', channel, session, message)) ?? (await checkCreate(core, channel, session, message));
    if (refused) return refuse(bayeuxError('channelForbidden', [channel], refused));

    const delivered: Message = { channel, data: message.data };
    if (message.ext !== undefined) {
      // Credentials never travel on to subscribers, and positions (and skip notes, see
      // delivery.ts) are the server's to give; `echo` is an instruction to the server, not news
      // for subscribers.
      const { token: _token, position: _position, skip: _skip, echo: _echo, ...ext } = message.ext;
      if (Object.keys(ext).length > 0) delivered.ext = ext;
    }
    if (isService(channel)) {
      // Service channels go to in-process listeners only; a listener's result is the answer
      // (CometD remote call: the publish reply, then {id, channel, successful, data}).
      if (message.id !== undefined) delivered.id = message.id;
      if (tooLarge(core, JSON.stringify(delivered))) return fail(bayeuxError('messageTooLarge', [channel], `larger than ${options.maxMessageBytes} bytes`));
      const { answer: result, failed } = await core.listeners.ask(delivered, session);
      if (result instanceof ServiceRefusal) return fail(result.error);
      // A listener threw (reported through 'error') and none answered: the caller is told, not left waiting.
      if (failed && result === undefined) return fail(bayeuxError('serverError', [channel], 'the service failed'));
      await emitReply(extensions, reply(message, true), context, out);
      if (result !== undefined) {
        const answer: Message = { channel, successful: true, data: result };
        if (message.id !== undefined) answer.id = message.id;
        await emitReply(extensions, answer, context, out);
      }
      return;
    }
    const publication = await prepare(extensions, delivered, null);
    if (publication && tooLarge(core, publication.payload)) {
      return refuse(bayeuxError('messageTooLarge', [channel], `larger than ${options.maxMessageBytes} bytes`));
    }
    if (publication) {
      // `ext.echo: false`: every subscriber but the publisher (a chat client that shows its own
      // message at once). Any client can ask for it: CometD and Faye let a message carry ext.
      if (message.ext?.echo === false) publication.exclude = session.id;
      await send(core, publication, session);
    }
    return emitReply(extensions, reply(message, true), context, out);
  } catch (error) {
    // A failure (the engine away, a hook that throws) is answered as a server error by dispatch:
    // the id is forgotten, so that the client's resend is published, not taken for a duplicate.
    if (dedupKey !== null) session.recentPublishes?.delete(dedupKey);
    throw error;
  }
}

/**
 * Publishes a message the server itself sends (server.publish) to every subscriber of its
 * channel, but the session `exclude` names. Without asynchronous outgoing extensions the message
 * is prepared and handed to the engine before this returns: no promise is made on the way.
 */
export function broadcast(core: Pick<ServerCore, 'extensions' | 'delivery' | 'engine' | 'events'>, message: Message, exclude?: string): Promise<void> {
  try {
    const prepared = prepare(core.extensions, message, null);
    if (prepared instanceof Promise) return prepared.then((publication) => sendPrepared(core, publication, exclude));
    return sendPrepared(core, prepared, exclude);
  } catch (error) {
    // A message JSON cannot hold (a BigInt, a cycle), an extension that threw: the caller's rejection.
    return Promise.reject(error);
  }
}

function sendPrepared(core: Pick<ServerCore, 'delivery' | 'engine' | 'events'>, publication: Publication | null, exclude: string | undefined): Promise<void> {
  if (!publication) return NOTHING_SENT;
  if (exclude !== undefined) publication.exclude = exclude;
  return send(core, publication, null);
}

const NOTHING_SENT: Promise<void> = Promise.resolve();

/**
 * What a /service listener returns to refuse a request: the publish is answered
 * `successful: false` with `error`, a Bayeux error (`bayeuxError(...)`), and nothing else.
 */
export class ServiceRefusal {
  constructor(readonly error: string) {}
}

/**
 * Hands a prepared publication to the engine, which positions it and delivers it on every node;
 * then the 'publish' event, when the application listens for it.
 */
function send(core: Pick<ServerCore, 'delivery' | 'engine' | 'events'>, publication: Publication, from: Session | null): Promise<void> {
  core.delivery.counters.published++;
  const published = core.engine.publish(publication);
  if (core.events.listenerCount('publish') === 0) return published;
  return published.then(() => void core.events.emit('publish', publication.message, from));
}

/**
 * Runs the outgoing extensions once and serialises once: every recipient shares the bytes. The
 * engine later adds the position to those bytes without serialising again (ext is written last).
 * Synchronous unless an outgoing extension answers with a promise.
 */
export function prepare(extensions: ExtensionPipeline, message: Message, session: Session | null): Publication | null | Promise<Publication | null> {
  const out = extensions.outgoing(message, { session, transport: null });
  return out instanceof Promise ? out.then(publicationOf) : publicationOf(out);
}

function publicationOf(message: Message | null): Publication | null {
  if (!message) return null;
  let serialised: ReturnType<typeof serialiseExtLast>;
  try {
    serialised = serialiseExtLast(message);
  } catch (error) {
    // Only a message made in this process can fail (a BigInt, a cycle): one from a client was parsed from JSON.
    throw new PerihelionError('ERR_INVALID_ARGUMENT', `cannot serialise the message on ${message.channel}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return { channel: message.channel, message, payload: serialised.text, ext: serialised.ext };
}

/** The "create" check, asked only of channels that nobody subscribes to yet. */
export async function checkCreate(core: Pick<ServerCore, 'security' | 'engine'>, channel: string, session: ServerSession, message: Message): Promise<string | null> {
  const { policy } = core.security;
  if (policy.open || (await core.engine.subscriberCount(channel)) > 0) return null;
  return policy.check('create', channel, session, message);
}

/** Whether a serialised message passes maxMessageBytes (counting bytes only when it might). */
function tooLarge(core: Pick<ServerCore, 'options'>, payload: string): boolean {
  const limit = core.options.maxMessageBytes;
  return payload.length > limit || (payload.length * 3 > limit && Buffer.byteLength(payload) > limit);
}
