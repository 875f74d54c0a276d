/**
 * The state channels of a server and how clients reach them:
 *
 * - `/service/state`, `{channel, op: "snapshot"}` → `{channel, epoch, version, value}`: the whole
 *   value, for a replica that starts or fell behind past the history. Answered when the caller may
 *   subscribe to the channel (the security policy's subscribe check).
 * - `/service/state`, `{channel, op: "propose", epoch, base, patch, id?}` → `{channel, version}`:
 *   a client's change (state-channel.ts decides), or an unsuccessful reply saying why not
 *   (409 conflict, 400 invalid patch or id, 403 refused, 500 when a hook failed: it may be sent again).
 * - A client never publishes on a state channel itself (403): its messages are the server's patches.
 *
 * A state channel lives in the process that created it: with the Redis engine (or `--workers`)
 * its patches reach every node's subscribers, and the snapshots and proposals of another node's
 * clients are passed to the node that holds it (state-relay.ts).
 */
import { bayeuxError, channelProblem, isMeta, isService, isWildcard, type Message } from '@perihelion/protocol';
import { StateError, type Patch } from '@perihelion/state';
import type { ExtensionPipeline } from '../extensions/pipeline.js';
import type { ListenerRegistry } from '../core/listeners.js';
import { ServiceRefusal } from '../core/publish.js';
import type { Session } from '../core/session.js';
import { KnownOwners } from '../core/known-owners.js';
import type { SecurityPolicy } from '../security/policy.js';
import { ProposalRefusal, StateChannel } from './state-channel.js';
import { RELAY_TIMEOUT_MS, StateRelay, type StateRelayHost } from './state-relay.js';

export const STATE_SERVICE = '/service/state';

/** Names of other nodes' state channels a node remembers at most (and holders it keeps in mind). */
const MAX_HELD_ELSEWHERE = 10_000;
/**
 * How long a node relays a channel's requests to the holder it last looked up without asking the
 * engine again (a Redis round trip per request otherwise), ms. A holder that gave the channel up
 * meanwhile answers 503 and is forgotten at once: the client's next try looks it up again.
 */
export const HOLDER_KEPT_MS = 2_000;

export interface StateServiceParts {
  listeners: ListenerRegistry;
  extensions: ExtensionPipeline;
  policy: SecurityPolicy;
  maxChannelLength: number;
  /** The live node, other than this one, that holds a state channel (`Engine.stateHolder`); absent when there are no other nodes. */
  holderOf?: (channel: string) => Promise<string | null>;
  /** How requests reach other nodes, and how they reach sessions from there. */
  relay: Omit<StateRelayHost, 'serve'>;
  /** Relayed requests waiting at once at most (`maxRelayedStateRequests`). */
  maxRelayed: number;
}

export class StateChannels {
  private readonly byChannel = new Map<string, StateChannel>();
  /**
   * State channels other nodes hold, as this node learned them (a request relayed, a channel it
   * could not create, a client's patch refused): a client's publish there is refused too.
   */
  private readonly heldElsewhere = new Set<string>();
  /** The holders of other nodes' channels lately looked up. */
  private readonly holders = new KnownOwners(MAX_HELD_ELSEWHERE, HOLDER_KEPT_MS);
  private installed = false;
  /** Requests for the state channels other nodes hold, and theirs for this node's. */
  readonly relay: StateRelay;

  constructor(private readonly parts: StateServiceParts) {
    // Answered from the start: on a server with no state channel yet, a request is told so (405)
    // rather than acknowledged and never answered.
    parts.listeners.add(STATE_SERVICE, (message, session) => this.answer(message, session));
    this.relay = new StateRelay({ ...parts.relay, serve: (request, session) => this.serveHere(request, session, true) }, RELAY_TIMEOUT_MS, parts.maxRelayed);
    // In a cluster another node's state channel may be published on here before any is created.
    if (parts.holderOf) this.install();
  }

  get(channel: string): StateChannel | undefined {
    return this.byChannel.get(channel);
  }

  /** Registers a channel created by the application (its name checked by the caller). */
  add(state: StateChannel): void {
    this.install();
    this.byChannel.set(state.channel, state);
  }

  /** Notes a state channel another node holds (bounded: past MAX_HELD_ELSEWHERE names, the first learned are forgotten). */
  heldBy(channel: string): void {
    if (this.heldElsewhere.has(channel)) return;
    if (this.heldElsewhere.size >= MAX_HELD_ELSEWHERE) this.heldElsewhere.delete(this.heldElsewhere.values().next().value!);
    this.heldElsewhere.add(channel);
    this.install();
  }

  /** Forgets a closed channel: no longer served, its name free again. */
  remove(channel: string): void {
    this.byChannel.delete(channel);
  }

  async close(): Promise<void> {
    this.relay.close();
    await Promise.all([...this.byChannel.values()].map((state) => state.close()));
  }

  /**
   * The publish guard, once the first state channel exists or from the start in a cluster (it runs
   * on every incoming message).
   */
  private install(): void {
    if (this.installed) return;
    this.installed = true;
    const forbidden = (message: Message): Message => ({ ...message, error: bayeuxError('channelForbidden', [message.channel], 'a state channel changes through proposals to /service/state') });
    const holderOf = this.parts.holderOf;
    this.parts.extensions.add({
      incoming: (message) => {
        // A client's publish on a state channel would pass for one of the server's patches.
        const { channel, data } = message;
        if (data === undefined) return message;
        if (this.byChannel.has(channel) || this.heldElsewhere.has(channel)) return forbidden(message);
        // Only what a replica would take for a patch can harm one: that alone is asked about
        // (a round trip), the first time for each channel another node holds.
        if (!holderOf || !isPatchShaped(data) || isMeta(channel) || isService(channel)) return message;
        return holderOf(channel).then(
          (holder) => {
            if (holder === null) return message;
            this.heldBy(channel);
            return forbidden(message);
          },
          () => ({ ...message, error: bayeuxError('unavailable', [channel], 'whether this is a state channel cannot be known now: the cluster cannot be reached') }),
        );
      },
    });
  }

  private async answer(message: Message, session: Session | null): Promise<unknown> {
    if (!session) return undefined;
    const request = (typeof message.data === 'object' && message.data !== null ? message.data : {}) as Record<string, unknown>;
    const { channel } = request;
    if (channel === undefined) return new ServiceRefusal(bayeuxError('missingParameter', ['channel'], 'send {"channel": "/a/state", "op": "snapshot" | "propose"}'));
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.parts.maxChannelLength });
    if (problem || isMeta(channel as string) || isService(channel as string) || isWildcard(channel as string)) {
      return new ServiceRefusal(bayeuxError('channelInvalid', [String(channel)], problem ?? 'not a state channel'));
    }
    const name = channel as string;
    // Asked before anything is said about the channel: a forbidden channel's existence is not told.
    const refused = await this.parts.policy.check('subscribe', name, session, message);
    if (refused) return new ServiceRefusal(bayeuxError('channelForbidden', [name], refused));
    if (this.byChannel.has(name) || !this.parts.holderOf) return this.serveHere(request, session);
    let holder: string | null;
    try {
      holder = await this.holderOf(name);
    } catch (error) {
      return new ServiceRefusal(bayeuxError('unavailable', [name], error instanceof Error ? error.message : String(error)));
    }
    if (holder === null) {
      // Held by nobody now (closed for good, perhaps): its name may be an ordinary channel again.
      this.heldElsewhere.delete(name);
      return this.serveHere(request, session);
    }
    this.heldBy(name);
    const answer = await this.relay.ask(holder, name, request, session);
    // Gone, silent, or no longer the holder: looked up again next time.
    if (answer instanceof ServiceRefusal && answer.error.startsWith('503:')) this.holders.forget(name);
    return answer;
  }

  /** The node that holds another node's channel: as lately looked up (HOLDER_KEPT_MS), or asked of the engine. */
  private async holderOf(name: string): Promise<string | null> {
    const known = this.holders.get(name);
    if (known !== undefined) return known;
    const holder = await this.parts.holderOf!(name);
    if (holder === null) this.holders.forget(name);
    else this.holders.set(name, holder);
    return holder;
  }

  /**
   * Answers a request whose caller may see the channel (its name checked), if this node holds it.
   * `relayed`: another node sent it here, taking this node for the holder; if it is not (it closed
   * the channel, or lost it to another node, meanwhile) the request may be sent again (503).
   */
  private async serveHere(request: Record<string, unknown>, session: Session, relayed = false): Promise<unknown> {
    const { op } = request;
    const name = String(request.channel);
    const state = this.byChannel.get(name);
    if (!state && relayed) return new ServiceRefusal(bayeuxError('unavailable', [name], 'the node asked no longer holds the state channel; ask again'));
    if (!state) return new ServiceRefusal(bayeuxError('channelInvalid', [name], 'no state channel of that name on this server'));
    if (op === 'snapshot') return state.snapshot();
    if (op !== 'propose') return new ServiceRefusal(bayeuxError('badRequest', [name], 'op is "snapshot" or "propose"'));
    const { epoch, base, patch, id } = request;
    if (typeof epoch !== 'string' || !Number.isSafeInteger(base) || (base as number) < 0 || !Array.isArray(patch) || (id !== undefined && (typeof id !== 'string' || id === '' || id.length > 64))) {
      return new ServiceRefusal(bayeuxError('badRequest', [name], 'a proposal is {channel, op: "propose", epoch, base: <version>, patch: [RFC 6902 operations], id?: a string of 1 to 64 characters}'));
    }
    try {
      const version = await state.propose(session, { epoch, base: base as number, patch: patch as Patch, ...(id !== undefined ? { id } : {}) });
      return { channel: name, version };
    } catch (error) {
      if (error instanceof ProposalRefusal) {
        const kind = error.kind === 'conflict' ? 'stateConflict' : error.kind === 'invalid' ? 'badRequest' : error.kind === 'failed' ? 'serverError' : 'refusedByApplication';
        return new ServiceRefusal(bayeuxError(kind, [name], error.message));
      }
      if (error instanceof StateError) return new ServiceRefusal(bayeuxError('badRequest', [name], error.message));
      throw error;
    }
  }
}

/** What a replica takes for one of the server's patches (packages/state/src/replica.ts). */
function isPatchShaped(data: unknown): boolean {
  if (typeof data !== 'object' || data === null) return false;
  const { epoch, version, patch } = data as Record<string, unknown>;
  return typeof epoch === 'string' && Number.isSafeInteger(version) && Array.isArray(patch);
}
