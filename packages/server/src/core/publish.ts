/**
 * The publish path: a message from a client (or the server) on its way to the engine.
 *
 * From a client, in this order: the channel (never /meta, never a pattern), the session, `data`
 * present (Bayeux §Publish: "MUST contain channel and data"), not while draining, the session's
 * publish rate, a resend already published (same id, same session or client on this node), the
 * security policy (publish, and create when nobody subscribes yet), then `ext.token` and
 * `ext.position` removed and the size checked. `ext.idempotencyKey`, when the client sets one, is
 * checked first and makes the publish recognisable when it is made again (PublishStep.once). A
 * /service message goes to the in-process listeners only, whose result is the answer; any other
 * is prepared (outgoing extensions, serialised once) and handed to the engine, which gives it its
 * position and delivers it (delivery.ts) on every node, unless the engine knows it as a resend or
 * a repeated idempotency key (PublishOnce).
 */
import { bayeuxError, channelProblem, isIdempotencyKey, isMeta, isService, isWildcard, serialiseExtLast, type Message } from '@perihelion/protocol';
import { CLIENT_KEYS, type Publication, type PublishOnce } from '../engine/engine.js';
import { PerihelionError } from '../errors.js';
import type { MaybePromise } from '../maybe-promise.js';
import type { ExtensionContext, ExtensionPipeline } from '../extensions/pipeline.js';
import { emitReply, reply, unknownClient } from './replies.js';
import { RecentIds, RESUME_WINDOW_MS } from '../engine/recent-ids.js';
import type { ServerCore } from './server.js';
import type { ServerSession, Session } from './session.js';

/** Publishes refused in a row for exceeding the rate before the session is ended as abusive. */
const MAX_REFUSED_PUBLISHES = 100;

type PublishCore = Pick<ServerCore, 'options' | 'isDraining' | 'delivery' | 'security' | 'engine' | 'extensions' | 'listeners' | 'events' | 'load'>;

/**
 * A broadcast or /service message from a client; its reply (and a remote call's answer) go to
 * `out`. Synchronous, making no promise, unless a step on the way answers with one (an
 * asynchronous `authorize` hook or extension, Redis): a chat's every message passes here.
 */
export function clientPublish(core: PublishCore, message: Message, session: ServerSession | null, context: ExtensionContext, out: string[]): void | Promise<void> {
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
  const idempotencyKey = message.ext?.idempotencyKey;
  if (idempotencyKey !== undefined) {
    if (!isIdempotencyKey(idempotencyKey)) return fail(bayeuxError('badRequest', ['ext.idempotencyKey'], 'an idempotency key is 1 to 255 visible ASCII characters'));
    // A service answers each request itself: nothing there could recognise a repeat.
    if (isService(channel)) return fail(bayeuxError('badRequest', ['ext.idempotencyKey'], 'idempotency keys are for broadcast channels, not /service'));
  }
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
  // not published again. The id is remembered before the checks below, which may wait, so a
  // resend arriving meanwhile is recognised too (and waits for the first try's outcome); a
  // refusal forgets it.
  const dedupKey = message.id !== undefined && options.publishDedup > 0 && !isService(channel) ? String(message.id) : null;
  if (dedupKey !== null) {
    // Shared with the client's other sessions here when it says which client it is (a resend on
    // a new session, after the old one was swept under a dead line, is recognised too).
    const ids = (session.recentPublishes ??= session.instance !== null ? core.delivery.publishIds.of(session.instance) : new RecentIds(options.publishDedup));
    if (ids.has(dedupKey)) {
      // The first try still on its way (Redis slow or away, a hook waiting) may yet fail, its
      // answer lost with the line that died under it: this resend is answered after it, as a
      // duplicate if it was published, else tried itself.
      const underway = ids.whenSettled(dedupKey);
      if (underway) return underway.then(() => clientPublish(core, message, session, context, out));
      core.delivery.counters.duplicatePublishes++;
      return emitReply(extensions, reply(message, true), context, out);
    }
    ids.add(dedupKey);
  }
  const step = new PublishStep(core, message, session, context, out, dedupKey);
  // A failure (the engine away, a hook that throws) is answered as a server error by dispatch:
  // the id is forgotten, so that the client's resend is published, not taken for a duplicate.
  try {
    const done = step.check();
    if (!(done instanceof Promise)) return done;
    const answered = done.catch((error: unknown) => step.failed(error));
    if (dedupKey !== null) session.recentPublishes?.underway(dedupKey, answered);
    return answered;
  } catch (error) {
    return step.failed(error);
  }
}

/** A client's publish past its first checks: the policy, then the message prepared and handed to the engine. */
class PublishStep {
  constructor(
    private readonly core: PublishCore,
    private readonly message: Message,
    private readonly session: ServerSession,
    private readonly context: ExtensionContext,
    private readonly out: string[],
    private readonly dedupKey: string | null,
  ) {}

  check(): void | Promise<void> {
    const refused = checkAccess(this.core, 'publish', this.message.channel, this.session, this.message);
    return refused instanceof Promise ? refused.then((settled) => this.checked(settled)) : this.checked(refused);
  }

  /** Forgets the id of a publish that failed, and passes the failure on. */
  failed(error: unknown): never {
    if (this.dedupKey !== null) this.session.recentPublishes?.delete(this.dedupKey);
    throw error;
  }

  private refuse(error: string): void | Promise<void> {
    if (this.dedupKey !== null) this.session.recentPublishes?.delete(this.dedupKey);
    return this.reply({ ...reply(this.message, false), error });
  }

  private reply(answer: Message): void | Promise<void> {
    return emitReply(this.core.extensions, answer, this.context, this.out);
  }

  private checked(refused: string | null): void | Promise<void> {
    const { message } = this;
    const { channel } = message;
    if (refused) return this.refuse(bayeuxError('channelForbidden', [channel], refused));
    const delivered: Message = { channel, data: message.data };
    if (message.ext !== undefined) {
      // Credentials never travel on to subscribers, and positions (and skip notes, see
      // delivery.ts) are the server's to give; `echo` and `idempotencyKey` are instructions to
      // the server, not news for subscribers.
      const { token: _token, position: _position, skip: _skip, echo: _echo, idempotencyKey: _key, ...ext } = message.ext;
      if (Object.keys(ext).length > 0) delivered.ext = ext;
    }
    if (isService(channel)) return this.askService(delivered);
    const publication = prepare(this.core.extensions, delivered, null);
    return publication instanceof Promise ? publication.then((prepared) => this.prepared(prepared)) : this.prepared(publication);
  }

  private prepared(publication: Publication | null): void | Promise<void> {
    const { core, message } = this;
    if (publication && tooLarge(core, publication.payload)) {
      return this.refuse(bayeuxError('messageTooLarge', [message.channel], `larger than ${core.options.maxMessageBytes} bytes`));
    }
    if (publication) {
      // `ext.echo: false`: every subscriber but the publisher (a chat client that shows its own
      // message at once). Any client can ask for it: CometD and Faye let a message carry ext.
      if (message.ext?.echo === false) publication.exclude = this.session.id;
      const once = this.once();
      if (once !== undefined) publication.once = once;
      const sent = send(core, publication, this.session);
      if (sent instanceof Promise) return sent.then((published) => this.reply(this.accepted(published)));
      return this.reply(this.accepted(sent));
    }
    return this.reply(reply(message, true));
  }

  /**
   * What makes this publish recognisable when it is made again. An idempotency key the
   * application chose (`ext.idempotencyKey`): the same key from the same user within
   * `idempotencyWindow`, from any session, instance or node, even after the client was restarted;
   * else what this node's ids cannot see and an engine shared by several nodes can: the resend of
   * a client that names itself (it resends on a new session) made on another node.
   */
  private once(): PublishOnce | undefined {
    const { options } = this.core;
    const key = this.message.ext?.idempotencyKey;
    if (typeof key === 'string') return { client: CLIENT_KEYS, id: `${this.session.identity?.id ?? ''}\u0000${key}`, keep: options.idempotencyKeys, forMs: options.idempotencyWindow };
    const client = this.session.instance;
    if (this.dedupKey !== null && client !== null) return { client, id: this.dedupKey, keep: options.publishDedup, forMs: RESUME_WINDOW_MS };
    return undefined;
  }

  /** The acknowledgement; one the engine recognised as a repeat says so (`ext.repeated`): nothing was published again. */
  private accepted(published: boolean): Message {
    const answer = reply(this.message, true);
    if (!published) answer.ext = { ...answer.ext, repeated: true };
    return answer;
  }

  /**
   * Service channels go to in-process listeners only; a listener's result is the answer (CometD
   * remote call: the publish reply, then {id, channel, successful, data}).
   */
  private async askService(delivered: Message): Promise<void> {
    const { core, message } = this;
    const { channel } = message;
    if (message.id !== undefined) delivered.id = message.id;
    if (tooLarge(core, JSON.stringify(delivered))) return this.refuse(bayeuxError('messageTooLarge', [channel], `larger than ${core.options.maxMessageBytes} bytes`));
    const { answer: result, failed } = await core.listeners.ask(delivered, this.session);
    if (result instanceof ServiceRefusal) return this.refuse(result.error);
    // A listener threw (reported through 'error') and none answered: the caller is told, not left waiting.
    if (failed && result === undefined) return this.refuse(bayeuxError('serverError', [channel], 'the service failed'));
    await this.reply(reply(message, true));
    if (result !== undefined) {
      const answer: Message = { channel, successful: true, data: result };
      if (message.id !== undefined) answer.id = message.id;
      await this.reply(answer);
    }
  }
}

/** How a message the server itself sends is addressed: every subscriber but `exclude`; `once` if its publisher may send it again. */
export interface BroadcastOptions {
  exclude?: string | undefined;
  once?: PublishOnce | undefined;
  /** Publication.elsewhere: for the other nodes only (this node's sessions and listeners had it). */
  elsewhere?: true | undefined;
}

/**
 * Publishes a message the server itself sends (server.publish) to every subscriber of its
 * channel, but the session `exclude` names. Without asynchronous outgoing extensions the message
 * is prepared and handed to the engine before this returns: no promise is made on the way.
 * Resolves to false when the engine recognised its `once` as a repeat (nothing published), else
 * true (published, or dropped by an outgoing extension, whose choice that was).
 */
export function broadcast(core: BroadcastCore, message: Message, options: BroadcastOptions = {}): Promise<boolean> {
  try {
    const sent = broadcastNow(core, message, options);
    return sent instanceof Promise ? sent : sent ? PUBLISHED : NOT_PUBLISHED;
  } catch (error) {
    // A message JSON cannot hold (a BigInt, a cycle), an extension that threw: the caller's rejection.
    return Promise.reject(error);
  }
}

/**
 * `broadcast`, answering at once when nothing had to wait (and throwing what it would reject
 * with): for the server's own events, such as a presence join at every set-up.
 */
export function broadcastNow(core: BroadcastCore, message: Message, options: BroadcastOptions = {}): MaybePromise<boolean> {
  const prepared = prepare(core.extensions, message, null);
  if (prepared instanceof Promise) return prepared.then((publication) => sendPrepared(core, publication, options));
  return sendPrepared(core, prepared, options);
}

type BroadcastCore = Pick<ServerCore, 'extensions' | 'delivery' | 'engine' | 'events'>;

function sendPrepared(core: BroadcastCore, publication: Publication | null, { exclude, once, elsewhere }: BroadcastOptions): MaybePromise<boolean> {
  if (!publication) return true;
  if (exclude !== undefined) publication.exclude = exclude;
  if (once !== undefined) publication.once = once;
  if (elsewhere) publication.elsewhere = elsewhere;
  return send(core, publication, null);
}

const PUBLISHED: Promise<boolean> = Promise.resolve(true);
const NOT_PUBLISHED: Promise<boolean> = Promise.resolve(false);

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
function send(core: Pick<ServerCore, 'delivery' | 'engine' | 'events'>, publication: Publication, from: Session | null): MaybePromise<boolean> {
  const published = core.engine.publish(publication);
  return published instanceof Promise ? published.then((done) => sent(core, publication, from, done)) : sent(core, publication, from, published);
}

/** Counts what the engine published (or recognised as a resend), and tells the application; says which it was. */
function sent(core: Pick<ServerCore, 'delivery' | 'events'>, publication: Publication, from: Session | null, published: boolean): boolean {
  if (!published) {
    core.delivery.counters.duplicatePublishes++;
    return false;
  }
  core.delivery.counters.published++;
  // The application heard one for the other nodes only when this node published it first.
  if (core.events.listenerCount('publish') > 0 && publication.elsewhere !== true) core.events.emit('publish', publication.message, from);
  return true;
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

/**
 * The policy's verdict on `operation` (subscribe or publish), then on creating the channel: null
 * when both allow, else the reason. At once unless the policy or the engine must be waited for.
 */
export function checkAccess(core: Pick<ServerCore, 'security' | 'engine'>, operation: 'subscribe' | 'publish', channel: string, session: ServerSession, message: Message): MaybePromise<string | null> {
  const refused = core.security.policy.check(operation, channel, session, message);
  if (refused instanceof Promise) return refused.then((settled) => settled ?? checkCreate(core, channel, session, message));
  return refused ?? checkCreate(core, channel, session, message);
}

/**
 * The "create" check, asked only of channels that nobody subscribes to yet; a policy that allows
 * creating the channel whatever it holds (the default) needs no look at the engine.
 */
function checkCreate(core: Pick<ServerCore, 'security' | 'engine'>, channel: string, session: ServerSession, message: Message): MaybePromise<string | null> {
  const { policy } = core.security;
  if (policy.createsFreely(channel, session)) return null;
  return core.engine.subscriberCount(channel).then((count) => (count > 0 ? null : policy.check('create', channel, session, message)));
}

/** Whether a serialised message is larger than maxMessageBytes (counting bytes only when it might). */
function tooLarge(core: Pick<ServerCore, 'options'>, payload: string): boolean {
  return exceedsBytes(payload, core.options.maxMessageBytes);
}

/** Whether `text` is longer than `limit` bytes in UTF-8 (a character is 1 to 3 bytes; counted only when that decides). */
export function exceedsBytes(text: string, limit: number): boolean {
  return text.length > limit || (text.length * 3 > limit && Buffer.byteLength(text) > limit);
}
