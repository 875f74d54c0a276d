/**
 * /meta/handshake: a client asks for a session (Bayeux §Handshake, BAYEUX.md A12–A16).
 *
 * - The request MUST contain channel, version and supportedConnectionTypes; it MAY contain
 *   minimumVersion, ext and id. It SHOULD be alone in its request, and the server MUST ignore any
 *   other message sent with it (§4.1.1; dispatch.ts does).
 * - A successful reply MUST contain channel, version, supportedConnectionTypes (at least one in
 *   common with the request, or the reply MUST be unsuccessful), clientId and successful; it MAY
 *   contain minimumVersion, advice, ext, id and authSuccessful.
 * - An unsuccessful reply MUST contain channel, successful and error, and carries no clientId
 *   (§3.5). Advice `reconnect: "none"` tells the client to stop; a refusal it may retry (shutting
 *   down, rate-limited) carries no `reconnect` (see DRAIN_RECONNECT_INTERVAL in connect.ts).
 * - The clientId is made by the server, unique, with at least 128 random bits (§clientId).
 *
 * Then, in this order: draining, the handshake rate and session count per address, the
 * authenticator (an Identity, or anonymous when allowed), and a token already expired.
 */
import { BAYEUX_VERSION, bayeuxError, type Message } from '@perihelion/protocol';
import { Acknowledgement } from '../../extensions/ack.js';
import type { MaybePromise } from '../../maybe-promise.js';
import { AuthenticationError } from '../../security/authenticate.js';
import type { Identity } from '../../security/identity.js';
import { randomHex } from '../../security/random.js';
import type { ProcessContext } from '../contract.js';
import { advice, reply as replyTo, type Reply } from '../replies.js';
import type { ServerCore } from '../server.js';
import { ServerSession } from '../session.js';

/** How long a client refused for overload is advised to wait before it tries again. */
const OVERLOAD_RETRY_MS = 5000;

type HandshakeCore = Pick<ServerCore, 'options' | 'isDraining' | 'security' | 'delivery' | 'engine' | 'events' | 'wheel' | 'reportError' | 'load'>;

/**
 * Synchronous, making no promise, unless the authenticator or the engine answers with one (a
 * token verified asynchronously, Redis): every connection's set-up begins here.
 */
export function handshake(core: HandshakeCore, message: Message, context: ProcessContext): MaybePromise<Reply> {
  const { options, security, delivery } = core;
  const reply = replyTo(message, false);
  delete reply.clientId; // §3.5: no clientId on a handshake reply unless one was made
  const { version, supportedConnectionTypes: types } = message;
  if (typeof version !== 'string') return { ...reply, error: bayeuxError('missingParameter', ['version']), advice: { reconnect: 'none' } };
  if (!Array.isArray(types) || !types.every((t) => typeof t === 'string')) {
    return { ...reply, error: bayeuxError('missingParameter', ['supportedConnectionTypes']), advice: { reconnect: 'none' } };
  }
  const minimum = typeof message.minimumVersion === 'string' ? message.minimumVersion : version;
  if (majorVersion(minimum) > 1 || majorVersion(version) < 1) {
    return { ...reply, error: bayeuxError('versionMismatch', [version], `this server speaks Bayeux ${BAYEUX_VERSION}`), advice: { reconnect: 'none' } };
  }
  const offered = options.transports;
  if (!types.some((t) => (offered as string[]).includes(t))) {
    return {
      ...reply,
      error: bayeuxError('connectionTypeMismatch', types.slice(0, 8), `this server offers ${offered.join(', ')}`),
      supportedConnectionTypes: offered,
      advice: { reconnect: 'none' },
    };
  }
  if (core.isDraining) {
    // No advice: both clients then try the handshake again (see DRAIN_RECONNECT_INTERVAL).
    return { ...reply, error: bayeuxError('serverError', [], 'server is shutting down') };
  }
  const overloaded = core.load.refusesSessions();
  if (overloaded) {
    // Shed, not failed: the client tries again later (a balancer's /ready check moves new clients elsewhere).
    return { ...reply, error: bayeuxError('overloaded', [], overloaded), advice: { interval: OVERLOAD_RETRY_MS } };
  }
  const address = context.request.remoteAddress ?? 'unknown';
  if (!security.handshakeLimiter.take(address)) {
    // Advice without `reconnect` (a refused handshake is retried anyway), for the reason given
    // at DRAIN_RECONNECT_INTERVAL: "handshake" here makes Faye drop what it asked before its first handshake.
    return { ...reply, error: bayeuxError('rateLimited', [], 'too many handshakes from this address'), advice: { interval: 2000 } };
  }
  const { maxSessionsPerIp } = options;
  if (maxSessionsPerIp > 0 && delivery.countFrom(address) >= maxSessionsPerIp) {
    return { ...reply, error: bayeuxError('rateLimited', [], `at most ${maxSessionsPerIp} sessions per address`), advice: { interval: 10_000 } };
  }
  let identity: MaybePromise<Identity | null>;
  try {
    identity = security.authenticator ? security.authenticator({ message, request: context.request }) : null;
  } catch (error) {
    return refusedCredentials(reply, error);
  }
  // Any thenable the authenticator answers with is waited for, as an `await` would.
  if (identity !== null && typeof (identity as PromiseLike<unknown>).then === 'function') {
    return Promise.resolve(identity).then(
      (settled) => authenticated(core, message, context, reply, settled),
      (error: unknown) => refusedCredentials(reply, error),
    );
  }
  return authenticated(core, message, context, reply, identity as Identity | null);
}

/** Credentials the authenticator refused (an AuthenticationError); anything else it threw is the server's failure. */
function refusedCredentials(reply: Reply, error: unknown): Reply {
  if (!(error instanceof AuthenticationError)) throw error;
  return { ...reply, error: bayeuxError('unauthorized', [], error.reason), advice: { reconnect: 'none' } };
}

/** The handshake once its credentials are read (`identity`, null when anonymous): the session is made. */
function authenticated(core: HandshakeCore, message: Message, context: ProcessContext, reply: Reply, identity: Identity | null): MaybePromise<Reply> {
  const { options, security, delivery } = core;
  if (identity === null && !options.anonymous) {
    return { ...reply, error: bayeuxError('unauthorized', [], 'credentials required (a token in ext.token)'), advice: { reconnect: 'none' } };
  }
  if (identity?.expiresAt !== undefined && identity.expiresAt <= Date.now()) {
    return { ...reply, error: bayeuxError('unauthorized', [], 'token expired'), advice: { reconnect: 'none' } };
  }
  const address = context.request.remoteAddress ?? 'unknown';
  const session = new ServerSession(newClientId(), delivery, options.maxQueue);
  session.identity = identity;
  session.browserId = context.request.browserId;
  // A handshake that carried its browser's cookie has presented it: bound from the start.
  session.browserConfirmed = context.request.browserId !== undefined && context.request.browserIdIssued !== true;
  session.remoteAddress = address;
  session.origin = context.connection;
  session.publishBucket = security.publishLimit();
  session.subscribeBucket = security.subscribeLimit();
  session.skipNotes = message.ext?.skips === true;
  // The client across its sessions (Perihelion's client names itself), with the user it speaks
  // for: publish ids are shared with that client's other sessions, never with another user's.
  const instance = message.ext?.instance;
  if (typeof instance === 'string' && instance.length >= 8 && instance.length <= 64) session.instance = `${identity?.id ?? ''}\u0000${instance}`;
  delivery.add(session, address);
  // Known to the engine at once, so that a delivery from any node reaches it; a failure is
  // reported and the session goes on (this node reaches it).
  let known: MaybePromise<void> = undefined;
  try {
    known = core.engine.addSession(session.id, identity?.id ?? null);
  } catch (error) {
    core.reportError(error);
  }
  if (known instanceof Promise) {
    return known.then(
      () => started(core, message, context, reply, session),
      (error: unknown) => {
        core.reportError(error);
        return started(core, message, context, reply, session);
      },
    );
  }
  return started(core, message, context, reply, session);
}

/** The session is known to the engine: bound, timed, announced, and the reply made. */
function started(core: HandshakeCore, message: Message, context: ProcessContext, reply: Reply, session: ServerSession): Reply {
  const { options, delivery } = core;
  const { identity } = session;
  if (context.connection) session.bind(context.connection);
  // A session that never connects is swept like one that stopped connecting.
  session.scheduleExpiry(options.maxInterval);
  if (identity?.expiresAt !== undefined) {
    // Credentials that expire end the session then, with a reason the client can see.
    session.tokenExpiry = core.wheel.schedule(identity.expiresAt - Date.now(), () => delivery.end(session, 'token-expired'));
  }
  // The CometD ack extension asks with ext.ack: true (see extensions/ack.ts).
  if (options.ack && message.ext?.ack === true) session.ack = new Acknowledgement(options.maxQueue);
  core.events.emit('handshake', session);
  // Built field by field: this runs for every new connection.
  reply.successful = true;
  if (identity) reply.authSuccessful = true;
  if (session.ack) reply.ext = { ...reply.ext, ack: session.ack.handshakeReply };
  // Asked for by Perihelion's client, which builds its frames within them (a frame past them is
  // refused whole, with no reply to any message in it).
  if (message.ext?.limits === true) reply.ext = { ...reply.ext, limits: { maxBatch: options.maxBatch, maxRequestBytes: options.maxRequestBytes, maxDepth: options.maxDepth } };
  reply.version = BAYEUX_VERSION;
  reply.minimumVersion = BAYEUX_VERSION;
  reply.supportedConnectionTypes = options.transports;
  reply.clientId = session.id;
  reply.advice = advice(options);
  return reply;
}

function majorVersion(version: string): number {
  const major = Number.parseInt(version, 10);
  return Number.isNaN(major) ? 0 : major;
}

/** 160 random bits in hexadecimal (Bayeux §clientId asks for at least 128 and unguessable). */
function newClientId(): string {
  return randomHex(20);
}
