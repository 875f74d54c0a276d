/**
 * No sticky sessions: a request for a session another node holds is forwarded to that node.
 *
 * Behind a balancer without affinity a client's requests land on any node. The node that gets a
 * batch naming a session it does not hold asks the engine which node does (with Redis: one HGET,
 * then kept in mind for the session's next requests: known-owners.ts)
 * and forwards the batch there through the engine's node-to-node messages; the owner processes it
 * as if it had come in itself (the session binding checks the forwarded request's cookie and
 * address) and sends the replies back, which the receiving node writes to its client. The session
 * stays where it is: its queue, its held /meta/connect and its deadlines never move. Only requests
 * that land on another node pay the extra hop.
 *
 * A client line that can be written to at any time (a WebSocket, an SSE or HTTP streaming
 * response) stays on the node that has it; the owner binds the session to a `RemoteLine`, whose
 * writes travel back as messages and are written to the real line. A held long-poll connect is
 * held on the owner; when its client gives up, the receiving node says so.
 *
 * A session whose owner does not answer (the node died, and Redis still names it) is answered
 * 402 unknown client with advice to handshake, at once when the owner is not listening, after
 * the wait otherwise, and so is the connect held for it on a WebSocket here once the owner is
 * found deaf: its client starts a new session and recovers from history.
 *
 * Messages between nodes (JSON; another node's bytes are checked like a client's):
 *   {t: "req", id, batch, transport, facts, line?, hold}   a forwarded batch
 *   {t: "rep", id}\n<reply>\n<reply>…                     its replies
 *   {t: "gone", id}                                       the client of a held request left
 *   {t: "attach", id, clientId, transport, facts, line}   bind a session to a stream held by the sender
 *   {t: "attached", id, ok}                               whether it was bound
 *   {t: "push", line}\n<message>\n<message>…             what the owner writes to a line
 *   {t: "end", line, reason?}                             the session of a stream line ended, and why
 *   {t: "closed", line}                                   the real line closed
 *   {t: "alive?"}                                         nothing: whether the node still listens (Redis counts the hearers)
 * Messages of other kinds go to `otherMessages` (the state channels' relay). Replies and pushes are
 * serialised messages already: they follow their header one per line as they are (JSON never
 * holds a raw newline), not escaped again as strings of a JSON array and unescaped on arrival
 * (see encodeNodeMessage).
 */
import { randomBytes } from 'node:crypto';
import { bayeuxError, isConnectionType, META, type Message } from '@perihelion/protocol';
import type { Engine } from '../engine/engine.js';
import type { ResolvedOptions } from '../options.js';
import type { ClientGoneWatcher, LineWatcher, ProcessContext, PushConnection, RequestFacts, Transport } from './contract.js';
import { isDisconnectReason, type DisconnectReason } from './events.js';
import { KnownOwners } from './known-owners.js';
import { RelayLine } from './relay-line.js';
import type { ServerSession } from './session.js';

/** What forwarding needs of the core. */
export interface ForwardingHost {
  readonly options: ResolvedOptions;
  readonly engine: Engine;
  /** This node's sessions. */
  readonly sessions: ReadonlyMap<string, unknown>;
  process(batch: readonly unknown[], context: ProcessContext): string[] | Promise<string[]>;
  sessionFor(clientId: string, context: ProcessContext): ServerSession | null;
  reportError(error: unknown): void;
}

/** How long a forwarded request may wait for its owner beyond the longest hold (`timeout`). */
const REPLY_MARGIN_MS = 10_000;

/**
 * How often a node with forwarded requests waiting, or lines fed by other nodes, asks whether
 * those nodes still listen, ms. A node that died (SIGKILL, a crash) says nothing, but Redis drops
 * its subscription at once: a message to it is then heard by nobody, so its waiting requests are
 * answered 402 at the next check instead of at the deadline (`timeout` + 10 s), and the streams it
 * fed end (their clients reconnect and are told to handshake) instead of staying open and silent.
 */
export const OWNER_CHECK_MS = 2_000;

/** Sessions whose owner a node keeps in mind (KnownOwners), and for how long, ms. */
const KNOWN_OWNERS = 65_536;
const OWNER_KEPT_MS = 60_000;

/** Sessions per line whose latest connect is remembered (see Forwarding.rememberConnect). */
const MAX_CONNECTS_PER_LINE = 8;
/** How soon a client told the cluster cannot be reached tries again (Bayeux advice interval). */
const RETRY_WHILE_AWAY_MS = 1000;

/** One of this node's lines that other nodes write to. */
interface LineEntry {
  line: PushConnection;
  /** The nodes that write to it. */
  owners: Set<string>;
  /** The latest /meta/connect forwarded over it, per session, and the node that holds it. */
  connects: Map<string, { owner: string; message: Message }>;
}

interface Waiting {
  resolve: (replies: string[] | null) => void;
  /** Called at once with the answer, before anything else this node reads. */
  onSettle: ((replies: string[] | null) => void) | undefined;
  timer: NodeJS.Timeout;
  /** The node that holds the session. */
  owner: string;
}

export class Forwarding {
  private readonly nodeLabel = randomBytes(4).toString('hex');
  private lastId = 0;
  /** Requests this node forwarded, waiting for their replies. */
  private readonly waiting = new Map<string, Waiting>();
  /** Lines of this node that other nodes write to, by line id; and each line's id. */
  private readonly lines = new Map<string, LineEntry>();
  private readonly lineIds = new WeakMap<PushConnection, string>();
  /** Lines other nodes hold for sessions of this node, by "<node> <line id>". */
  private readonly remoteLines = new Map<string, RemoteLine>();
  /** Held requests forwarded to this node, by "<node> <request id>": whom to tell when their client leaves. */
  private readonly goneWatchers = new Map<string, ClientGoneWatcher>();
  /** The owners of other nodes' sessions lately looked up (a Redis round trip per request otherwise). */
  private readonly owners = new KnownOwners(KNOWN_OWNERS, OWNER_KEPT_MS);
  /** Checks that the owners of the waiting requests and of the lines still listen; runs while there are any. */
  private ownerCheck: NodeJS.Timeout | undefined;

  constructor(private readonly host: ForwardingHost) {}

  // ---------------------------------------------------------------- on the node a client talks to

  /**
   * The replies of `batch` from the node that holds its session, when another node does; null
   * when this node should process it itself (a handshake, a session of its own, an unknown one).
   * Null at once, without a promise, for a handshake or a session of this node: most batches.
   */
  forward(batch: readonly unknown[], context: ProcessContext): Promise<string[] | null> | null {
    const clientId = soleClientId(batch);
    if (clientId === null || this.host.sessions.has(clientId)) return null;
    return this.forwardTo(clientId, batch, context);
  }

  private async forwardTo(clientId: string, batch: readonly unknown[], context: ProcessContext): Promise<string[] | null> {
    const owner = await this.ownerOf(clientId);
    // Redis away: who holds the session cannot be known. A connect is told to try again in a
    // moment, on whichever node it reaches (a 402 would make a client behind a balancer without
    // affinity lose its session for the whole outage); anything else is judged here as before
    // (a 402: a subscribe answered 503 would be dropped for good by CometD, Faye and ours).
    if (owner === undefined) return connectsOnly(batch) ? unavailable(batch) : null;
    if (owner === null) return null;
    const id = this.nextId();
    const request: Record<string, unknown> = { t: 'req', id, batch, transport: context.transport, facts: context.request, hold: context.onClientGone !== undefined };
    if (context.connection) {
      request.line = this.lineOf(context.connection, owner);
      this.rememberConnect(request.line as string, clientId, owner, batch as Message[]);
    }
    const replied = this.await(id, owner);
    const heard = await this.tellNode(owner, request);
    if (heard !== true) {
      this.settle(id, null);
      this.owners.forget(clientId);
      return heard === undefined && connectsOnly(batch) ? unavailable(batch) : unknownClient(batch);
    }
    context.onClientGone?.({ clientGone: () => void this.tellNode(owner, { t: 'gone', id }) });
    const replies = await replied;
    if (replies !== null) {
      // The owner no longer knows the session (it ended there): not its owner for anyone now.
      // (The first reply answers the batch's first message: no need to read the messages after.)
      if (replies.length > 0 && isUnknownClient(replies[0]!)) this.owners.forget(clientId);
      return replies;
    }
    this.owners.forget(clientId);
    // No answer from the owner: gone, unless Redis went away meanwhile (then a connect is told to retry).
    const knowable = await this.host.engine.ownerOf(clientId).then(
      () => true,
      () => false,
    );
    return !knowable && connectsOnly(batch) ? unavailable(batch) : unknownClient(batch);
  }

  /**
   * The node that holds `clientId`: null when none other does (this node's, or unknown),
   * undefined when that cannot be known now (Redis away). Kept in mind (see KnownOwners).
   */
  private async ownerOf(clientId: string): Promise<string | null | undefined> {
    const known = this.owners.get(clientId);
    if (known !== undefined) return known;
    const owner = await this.host.engine.ownerOf(clientId).catch(() => undefined);
    if (typeof owner === 'string') this.owners.set(clientId, owner);
    return owner;
  }

  /**
   * Binds a session another node holds to a stream opened here (SSE, HTTP streaming): `start`
   * writes its beginning once the owner agreed. Resolves to false when no other node holds the
   * session or it refused the request (another browser's, say).
   */
  async attach(clientId: string, line: PushConnection, facts: RequestFacts, start: () => void): Promise<boolean> {
    const owner = (await this.ownerOf(clientId)) ?? null;
    if (owner === null) return false;
    const id = this.nextId();
    // Started as the answer is read, before any message the owner writes to it right after.
    const replied = this.await(id, owner, (replies) => {
      if (replies !== null) start();
    });
    const message = { t: 'attach', id, clientId, transport: line.transport, facts, line: this.lineOf(line, owner) };
    if ((await this.tellNode(owner, message)) !== true) {
      this.settle(id, null);
      this.owners.forget(clientId);
      return false;
    }
    const agreed = (await replied) !== null;
    if (!agreed) this.owners.forget(clientId);
    return agreed;
  }

  // ---------------------------------------------------------------- messages from other nodes

  onNodeMessage(from: string, payload: string): void {
    const message = decodeNodeMessage(payload);
    if (message === null) {
      this.host.reportError(new Error(`node ${from} sent a forwarding message that is not JSON`));
      return;
    }
    const { t, id, line, texts } = message;
    switch (t) {
      case 'req':
        if (typeof id === 'string' && Array.isArray(message.batch)) void this.serve(from, id, message);
        return;
      case 'attach':
        if (typeof id === 'string' && typeof message.clientId === 'string' && typeof line === 'string') this.serveAttach(from, id, message.clientId, line, message);
        return;
      case 'rep':
        if (typeof id === 'string' && isTexts(texts)) this.settle(id, texts);
        return;
      case 'attached':
        if (typeof id === 'string') this.settle(id, message.ok === true ? [] : null);
        return;
      case 'gone':
        if (typeof id === 'string') this.goneWatchers.get(`${from} ${id}`)?.clientGone();
        return;
      case 'push':
        if (typeof line === 'string' && isTexts(texts)) this.lines.get(line)?.line.send(texts);
        return;
      case 'end':
        // Why, so that the stream tells its client what a held connect would have (stream.ts).
        if (typeof line === 'string') this.lines.get(line)?.line.sessionEnded(isDisconnectReason(message.reason) ? message.reason : undefined);
        return;
      case 'closed':
        if (typeof line === 'string') this.remoteLines.get(`${from} ${line}`)?.close();
        return;
      default:
        this.otherMessages?.(from, message);
    }
  }

  /** Where messages between nodes that are not forwarding's own go (the state channels' relay, state/state-relay.ts). */
  otherMessages: ((from: string, message: Record<string, unknown>) => void) | null = null;

  /** A batch forwarded by `from`: processed here, its replies sent back. */
  private async serve(from: string, id: string, message: Record<string, unknown>): Promise<void> {
    const key = `${from} ${id}`;
    const context: ProcessContext = { transport: transportOf(message.transport), request: factsOf(message.facts), forwarded: true };
    if (typeof message.line === 'string') context.connection = this.remoteLine(from, message.line, context.transport);
    if (message.hold === true) context.onClientGone = (watcher) => this.goneWatchers.set(key, watcher);
    try {
      const replies = await this.host.process(message.batch as unknown[], context);
      await this.tellNode(from, { t: 'rep', id }, replies);
    } catch (error) {
      this.host.reportError(error);
    } finally {
      this.goneWatchers.delete(key);
    }
  }

  private serveAttach(from: string, id: string, clientId: string, line: string, message: Record<string, unknown>): void {
    const remote = this.remoteLine(from, line, transportOf(message.transport));
    const session = this.host.sessionFor(clientId, { transport: remote.transport, request: factsOf(message.facts) });
    if (session) session.bind(remote);
    else remote.close();
    void this.tellNode(from, { t: 'attached', id, ok: session !== null });
  }

  // ---------------------------------------------------------------- lines

  /** The id of one of this node's lines, registered so that `owner` may write to it. */
  private lineOf(line: PushConnection, owner: string): string {
    let id = this.lineIds.get(line);
    if (id === undefined) {
      id = `${this.nodeLabel}-${++this.lastId}`;
      this.lineIds.set(line, id);
      const entry: LineEntry = { line, owners: new Set(), connects: new Map() };
      this.lines.set(id, entry);
      const lineId = id;
      line.onClose(() => {
        this.lines.delete(lineId);
        for (const node of entry.owners) void this.tellNode(node, { t: 'closed', line: lineId });
      });
    }
    this.lines.get(id)?.owners.add(owner);
    this.watchOwners();
    return id;
  }

  /**
   * Remembers the connect of a batch forwarded over a line: held on the owner and answered over
   * the line later, it is answered here if the owner dies meanwhile (see checkOwners). A
   * disconnect forgets the session.
   */
  private rememberConnect(lineId: string, clientId: string, owner: string, batch: readonly Message[]): void {
    const connects = this.lines.get(lineId)?.connects;
    if (!connects) return;
    connects.delete(clientId);
    if (batch.some((message) => message.channel === META.disconnect)) return;
    const connect = batch.find((message) => message.channel === META.connect);
    if (!connect) return;
    connects.set(clientId, { owner, message: connect });
    // A line speaks for one session at a time, as a rule; a few more are remembered, not more.
    if (connects.size > MAX_CONNECTS_PER_LINE) connects.delete(connects.keys().next().value!);
  }

  /** The line `node` holds, as a push connection here (one object per line, so sessions recognise it). */
  private remoteLine(node: string, line: string, transport: Transport): RemoteLine {
    const key = `${node} ${line}`;
    let remote = this.remoteLines.get(key);
    if (!remote) {
      remote = new RemoteLine(transport, async (message, texts) => (await this.tellNode(node, { ...message, line }, texts)) === true);
      this.remoteLines.set(key, remote);
      remote.onClose(() => this.remoteLines.delete(key));
    }
    return remote;
  }

  /** Whether `node` heard `message` (with `texts`, serialised messages: see encodeNodeMessage); undefined when that cannot be known (Redis away). */
  tellNode(node: string, message: Record<string, unknown>, texts?: readonly string[]): Promise<boolean | undefined> {
    return this.host.engine.sendToNode(node, encodeNodeMessage(message, texts)).catch(() => undefined);
  }

  // ---------------------------------------------------------------- replies awaited

  private nextId(): string {
    return `${this.nodeLabel}-${++this.lastId}`;
  }

  private await(id: string, owner: string, onSettle?: (replies: string[] | null) => void): Promise<string[] | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(id, null), this.host.options.timeout + REPLY_MARGIN_MS);
      timer.unref();
      this.waiting.set(id, { resolve, onSettle, timer, owner });
      this.watchOwners();
    });
  }

  private watchOwners(): void {
    this.ownerCheck ??= setInterval(() => this.checkOwners(), OWNER_CHECK_MS).unref();
  }

  /**
   * One no-op message to each owner some request waits for or some line is fed by. For an owner
   * nobody hears: its requests are answered as if it were gone, and its streams end.
   */
  private checkOwners(): void {
    const owners = new Set([...this.waiting.values()].map((waiting) => waiting.owner));
    for (const entry of this.lines.values()) for (const owner of entry.owners) owners.add(owner);
    if (owners.size === 0) {
      clearInterval(this.ownerCheck);
      this.ownerCheck = undefined;
      return;
    }
    for (const owner of owners) {
      void this.tellNode(owner, { t: 'alive?' }).then((heard) => {
        // Heard, or not known (Redis away: asked again at the next check, not taken for gone).
        if (heard !== false) return;
        for (const [id, waiting] of [...this.waiting]) if (waiting.owner === owner) this.settle(id, null);
        for (const { line, owners: fedBy, connects } of [...this.lines.values()]) {
          // A WebSocket stays open (it may speak for other sessions): the connect its client sent
          // last for a session of that node is answered 402 here, as its next one would be, so
          // that the client handshakes now rather than at its own timeout.
          for (const [clientId, connect] of connects) {
            if (connect.owner !== owner) continue;
            connects.delete(clientId);
            line.send(unknownClient([connect.message]));
          }
          if (fedBy.delete(owner) && fedBy.size === 0 && line.transport !== 'websocket') line.sessionEnded();
        }
      });
    }
  }

  private settle(id: string, replies: string[] | null): void {
    const waiting = this.waiting.get(id);
    if (!waiting) return;
    this.waiting.delete(id);
    clearTimeout(waiting.timer);
    waiting.onSettle?.(replies);
    waiting.resolve(replies);
  }

  /** Stops waiting: every forwarded request still waiting is answered as if its owner were gone. */
  close(): void {
    clearInterval(this.ownerCheck);
    this.ownerCheck = undefined;
    for (const id of [...this.waiting.keys()]) this.settle(id, null);
    for (const remote of [...this.remoteLines.values()]) remote.close();
  }
}

/**
 * A line another node holds, as the owner of its session sees it: what the session writes goes
 * to that node as a message. Closed when that node says its line closed, or stops listening.
 */
class RemoteLine extends RelayLine {
  /** Pushes sent and not known yet to have been heard. */
  private inFlight = 0;
  /**
   * Once a push was not heard (that node died: Redis counts no listener): what reached nobody,
   * in order, and the session it goes back to.
   */
  private unheard: { payloads: string[]; session: LineWatcher | null } | null = null;

  constructor(
    transport: Transport,
    private readonly tell: (message: Record<string, unknown>, texts?: readonly string[]) => Promise<boolean>,
  ) {
    super(transport);
  }

  protected relay(serialised: string[]): void {
    this.inFlight++;
    void this.tell({ t: 'push' }, serialised).then((heard) => {
      this.inFlight--;
      if (!heard) {
        // The pushes after it were sent too, and come back unheard in order: the messages go
        // back to the session once all have, so that its next connect gets them in order.
        if (this.unheard === null) {
          this.unheard = { payloads: [], session: this.soleWatcher() };
          this.close();
        }
        this.unheard.payloads.push(...serialised);
      }
      if (this.unheard !== null && this.inFlight === 0 && this.unheard.payloads.length > 0) {
        const { payloads, session } = this.unheard;
        this.unheard.payloads = [];
        session?.lineReturned?.(this, payloads);
      }
    });
  }

  sessionEnded(reason?: DisconnectReason): void {
    if (this.transport === 'eventsource' || this.transport === 'http-streaming') void this.tell(reason === undefined ? { t: 'end' } : { t: 'end', reason });
  }
}

/**
 * A message to another node: its JSON, then `texts` (serialised Bayeux messages) one per line.
 * Texts that could not be told apart so (an empty one, or one with a raw newline, which no JSON
 * serialiser makes) go inside the JSON, as `texts`, instead.
 */
export function encodeNodeMessage(message: Record<string, unknown>, texts?: readonly string[]): string {
  if (texts === undefined) return JSON.stringify(message);
  if (!texts.every((text) => text !== '' && !text.includes('\n'))) return JSON.stringify({ ...message, texts });
  return `${JSON.stringify(message)}\n${texts.join('\n')}`;
}

/** The message encodeNodeMessage made, with its texts as `texts`; null when it is not one. */
export function decodeNodeMessage(payload: string): Record<string, unknown> | null {
  const newline = payload.indexOf('\n');
  let message: unknown;
  try {
    message = JSON.parse(newline < 0 ? payload : payload.slice(0, newline));
  } catch {
    return null;
  }
  if (typeof message !== 'object' || message === null || Array.isArray(message)) return null;
  const record = message as Record<string, unknown>;
  if (newline >= 0) record.texts = newline + 1 === payload.length ? [] : payload.slice(newline + 1).split('\n');
  return record;
}

function isTexts(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((text) => typeof text === 'string');
}

/** The one clientId every message of a batch names; null for a handshake, none, or several. */
function soleClientId(batch: readonly unknown[]): string | null {
  let clientId: string | null = null;
  for (const value of batch) {
    const message = value as Message | null;
    if (typeof message !== 'object' || message === null || message.channel === META.handshake) return null;
    if (typeof message.clientId !== 'string') return null;
    if (clientId !== null && message.clientId !== clientId) return null;
    clientId = message.clientId;
  }
  return clientId;
}

/** Each message answered 402 unknown client with advice to handshake: its session's node is gone. */
function unknownClient(batch: readonly unknown[]): string[] {
  return refuseAll(batch, bayeuxError('clientUnknown', [String((batch[0] as Message | undefined)?.clientId)]), { reconnect: 'handshake', interval: 0 });
}

/** Whether a reply says its session is not known (402): the session ended on its node. */
function isUnknownClient(reply: string): boolean {
  return reply.includes('"error":"402:');
}

/** Whether every message of `batch` is a /meta/connect. */
function connectsOnly(batch: readonly unknown[]): boolean {
  return batch.every((value) => (value as Message | null)?.channel === META.connect);
}

/** While the node that holds a session cannot be looked up: try again in a second. */
function unavailable(batch: readonly unknown[]): string[] {
  return refuseAll(batch, bayeuxError('unavailable', [], 'the cluster cannot be reached from this node; try again'), { reconnect: 'retry', interval: RETRY_WHILE_AWAY_MS });
}

function refuseAll(batch: readonly unknown[], error: string, advice: Message['advice']): string[] {
  return batch.map((value) => {
    const message = value as Message;
    const reply: Message = { channel: message.channel, successful: false, error, advice: advice! };
    if (message.id !== undefined) reply.id = message.id;
    if (typeof message.clientId === 'string') reply.clientId = message.clientId;
    return JSON.stringify(reply);
  });
}

function transportOf(value: unknown): Transport {
  return isConnectionType(value) ? value : 'long-polling';
}

/** Request facts from another node, kept only where they have the right types. */
function factsOf(value: unknown): RequestFacts {
  const facts = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const headers = typeof facts.headers === 'object' && facts.headers !== null ? (facts.headers as RequestFacts['headers']) : {};
  const out: RequestFacts = { headers, remoteAddress: typeof facts.remoteAddress === 'string' ? facts.remoteAddress : undefined, url: typeof facts.url === 'string' ? facts.url : '' };
  if (typeof facts.browserId === 'string') out.browserId = facts.browserId;
  if (facts.browserIdIssued === true) out.browserIdIssued = true;
  return out;
}
