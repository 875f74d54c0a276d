/**
 * State channels across the nodes of a cluster. A state channel lives in the process that created
 * it, which claims it in the engine (`Engine.claimState`: one live holder per channel). A client's
 * request to /service/state reaches the node that holds its session; when that node does not hold
 * the state channel, it checks the request against its security policy (it has the session) and
 * passes it to the holder, which answers it for the session as this node describes it
 * (`RemoteSession`), and the answer comes back as the reply.
 *
 * Snapshots asked for at once (every replica after a restart of the holder) travel once: the
 * requests for one channel's snapshot that arrive while one is on its way share its answer, which
 * is serialised once for all their replies. A value sent to each would be the value times the
 * replicas through Redis pub/sub, past its output buffer limit (32 MB by default), and Redis would
 * cut the node off.
 *
 * Messages between nodes (JSON, through the engine's node-to-node messages, core/forwarding.ts):
 *   {t: "state", id, request, session}   a request to the holder; `session` is SessionFacts
 *   {t: "state-rep", id, data}           its answer
 *   {t: "state-rep", id, error}          its refusal (a Bayeux error string)
 */
import { bayeuxError, isConnectionType, type ConnectionType } from '@perihelion/protocol';
import type { Session } from '../core/session.js';
import { ServiceRefusal } from '../core/publish.js';
import { sharedAnswer } from '../core/replies.js';
import type { Identity } from '../security/identity.js';

/** How long a request waits for the holder's answer, ms (a proposal's `validate` and `save` hooks run meanwhile). */
export const RELAY_TIMEOUT_MS = 10_000;
/** Requests a node keeps waiting for holders' answers at most, by default (`maxRelayedStateRequests`); past it, more are answered 503 at once. */
export const MAX_RELAYED = 10_000;

/** What the holder learns of the session a request is for. */
interface SessionFacts {
  id: string;
  identity: Identity | null;
  connectionType: ConnectionType | null;
  subscriptions: string[];
  remoteAddress: string | undefined;
}

export interface StateRelayHost {
  /** Sends a message to another node; false when it is not listening, undefined when that cannot be known. */
  tell(node: string, message: Record<string, unknown>): Promise<boolean | undefined>;
  /** Answers a request for a state channel of this node, for `session` (no policy check: the asking node made it). */
  serve(request: Record<string, unknown>, session: Session): Promise<unknown>;
  /** `Session.deliver` and `Session.disconnect` of a session another node holds. */
  deliver(clientId: string, channel: string, data: unknown): Promise<unknown>;
  disconnect(clientId: string): Promise<unknown>;
  reportError(error: unknown): void;
}

interface Waiting {
  /** The node asked: only its answer settles the request. */
  holder: string;
  resolve: (answer: unknown) => void;
  timer: NodeJS.Timeout;
}

export class StateRelay {
  private readonly waiting = new Map<string, Waiting>();
  /** The snapshot on its way from its holder, per channel. */
  private readonly snapshots = new Map<string, Promise<unknown>>();
  private lastId = 0;

  constructor(
    private readonly host: StateRelayHost,
    private readonly timeoutMs = RELAY_TIMEOUT_MS,
    private readonly maxWaiting = MAX_RELAYED,
  ) {}

  /** Passes `request` for `session` to `holder`; resolves to its answer, or a refusal saying why there is none. */
  ask(holder: string, channel: string, request: Record<string, unknown>, session: Session): Promise<unknown> {
    if (request.op !== 'snapshot') return this.send(holder, channel, request, session);
    // Answered alike for every session that may see the channel (checked before it came here).
    const key = `${holder} ${channel}`;
    let answer = this.snapshots.get(key);
    if (!answer) {
      answer = this.send(holder, channel, { channel, op: 'snapshot' }, session).then((data) => (isObject(data) && !(data instanceof ServiceRefusal) ? sharedAnswer(data) : data));
      this.snapshots.set(key, answer);
      void answer.finally(() => this.snapshots.delete(key));
    }
    return answer;
  }

  private async send(holder: string, channel: string, request: Record<string, unknown>, session: Session): Promise<unknown> {
    if (this.waiting.size >= this.maxWaiting) return unreachable(channel, `${this.waiting.size} requests wait for the nodes holding state channels already`);
    const id = String(++this.lastId);
    const answered = new Promise<unknown>((resolve) => {
      const timer = setTimeout(() => this.settle(id, unreachable(channel, `node ${holder}, which holds it, did not answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      timer.unref();
      this.waiting.set(id, { holder, resolve, timer });
    });
    const heard = await this.host.tell(holder, { t: 'state', id, request, session: factsOf(session) });
    if (heard !== true) this.settle(id, unreachable(channel, heard === false ? `node ${holder}, which holds it, is gone` : 'the cluster cannot be reached'));
    return answered;
  }

  /** A message of the relay from another node; false when it is not one. */
  onNodeMessage(from: string, message: Record<string, unknown>): boolean {
    const { t, id } = message;
    if (t === 'state' && typeof id === 'string') {
      void this.answer(from, id, message);
      return true;
    }
    if (t === 'state-rep' && typeof id === 'string') {
      if (this.waiting.get(id)?.holder === from) this.settle(id, typeof message.error === 'string' ? new ServiceRefusal(message.error) : message.data);
      return true;
    }
    return false;
  }

  /** Answers what waits (the server closes): as if the holder could not be reached. */
  close(): void {
    for (const id of [...this.waiting.keys()]) this.settle(id, new ServiceRefusal(bayeuxError('unavailable', [], 'the server is shutting down')));
  }

  private async answer(from: string, id: string, message: Record<string, unknown>): Promise<void> {
    const request = message.request;
    const session = remoteSession(message.session, this.host);
    let reply: Record<string, unknown>;
    if (typeof request !== 'object' || request === null || session === null) {
      reply = { t: 'state-rep', id, error: bayeuxError('badRequest', [], `node ${from} sent a state request that is not one`) };
    } else {
      try {
        const answer = await this.host.serve(request as Record<string, unknown>, session);
        reply = answer instanceof ServiceRefusal ? { t: 'state-rep', id, error: answer.error } : { t: 'state-rep', id, data: answer };
      } catch (error) {
        this.host.reportError(error);
        reply = { t: 'state-rep', id, error: bayeuxError('serverError', [], 'the state channel failed to answer') };
      }
    }
    await this.host.tell(from, reply);
  }

  private settle(id: string, answer: unknown): void {
    const waiting = this.waiting.get(id);
    if (!waiting) return;
    this.waiting.delete(id);
    clearTimeout(waiting.timer);
    waiting.resolve(answer);
  }
}

function isObject(value: unknown): value is object {
  return typeof value === 'object' && value !== null;
}

function unreachable(channel: string, why: string): ServiceRefusal {
  // 503: the request may be sent again (a client's replica does, after a while).
  return new ServiceRefusal(bayeuxError('unavailable', [channel], `the state channel cannot be reached: ${why}`));
}

function factsOf(session: Session): SessionFacts {
  return { id: session.id, identity: session.identity, connectionType: session.connectionType, subscriptions: [...session.subscriptions], remoteAddress: session.remoteAddress };
}

/**
 * The session of a relayed request, as its node described it: what a `validate` hook reads
 * (id, identity, address, subscriptions) is there; `data` is empty (it stays with the session's
 * node); `deliver` and `disconnect` reach the session wherever it is (what `deliver` cannot send,
 * data JSON cannot hold, is reported through 'error' rather than thrown: the delivery is async).
 */
function remoteSession(facts: unknown, host: StateRelayHost): Session | null {
  if (typeof facts !== 'object' || facts === null) return null;
  const { id, identity, connectionType, subscriptions, remoteAddress } = facts as Record<string, unknown>;
  if (typeof id !== 'string' || !Array.isArray(subscriptions) || !subscriptions.every((s) => typeof s === 'string')) return null;
  if (identity !== null && !isIdentity(identity)) return null;
  return {
    id,
    identity: identity as Identity | null,
    connectionType: typeof connectionType === 'string' && isConnectionType(connectionType) ? connectionType : null,
    subscriptions: new Set(subscriptions as string[]),
    data: new Map(),
    remoteAddress: typeof remoteAddress === 'string' ? remoteAddress : undefined,
    deliver: (channel, data) => void host.deliver(id, channel, data).catch((error: unknown) => host.reportError(error)),
    disconnect: () => void host.disconnect(id).catch((error: unknown) => host.reportError(error)),
  };
}

function isIdentity(value: unknown): value is Identity {
  if (typeof value !== 'object' || value === null) return false;
  const { id, roles, claims } = value as Record<string, unknown>;
  return typeof id === 'string' && Array.isArray(roles) && roles.every((r) => typeof r === 'string') && typeof claims === 'object' && claims !== null;
}
