/**
 * The Redis engine's census: every node describes its sessions to the node that asked (for
 * `server.sessions()` and `deliverWhere`, whose predicate runs where the application called it).
 *
 * The asking node sends one question to every node on the bus and waits for an answer from each
 * node alive at that moment (the heartbeats, redis-liveness.ts), up to `commandTimeout`. A node
 * that does not answer in time is left out, and that is reported: its sessions are likely gone
 * with it. Answers are another node's bytes, read as untrusted input: anything but a list of
 * session descriptions is reported and skipped.
 */
import { randomBytes } from 'node:crypto';
import type { SessionInfo } from './engine.js';
import { BusFormatError } from './redis-bus.js';
import { unavailable } from './redis-connection.js';

interface Asked {
  waiting: Set<string>;
  infos: SessionInfo[];
  done: () => void;
}

export interface CensusParts {
  nodeId: string;
  /** Ids of the live nodes, this one included. */
  nodes(): Promise<string[]>;
  /** Sends the question to every node. */
  ask(request: string): Promise<void>;
  /** Sends this node's answer to the node that asked. */
  answer(origin: string, request: string, payload: string): Promise<void>;
  timeout: number;
  report(error: unknown): void;
}

export class Census {
  private readonly asked = new Map<string, Asked>();

  constructor(private readonly parts: CensusParts) {}

  /** Every node's sessions: `own` (this node's) and the answers of the others. */
  async take(own: SessionInfo[]): Promise<SessionInfo[]> {
    const others = (await this.parts.nodes()).filter((node) => node !== this.parts.nodeId);
    if (others.length === 0) return own;
    const request = randomBytes(6).toString('hex');
    const entry: Asked = { waiting: new Set(others), infos: [...own], done: () => {} };
    const answered = new Promise<void>((resolve) => (entry.done = resolve));
    this.asked.set(request, entry);
    const timer = setTimeout(() => entry.done(), this.parts.timeout);
    try {
      await this.parts.ask(request).catch((error: unknown) => {
        throw unavailable('cannot ask the other nodes for their sessions', error);
      });
      await answered;
    } finally {
      clearTimeout(timer);
      this.asked.delete(request);
    }
    if (entry.waiting.size > 0) {
      this.parts.report(unavailable(`${entry.waiting.size} node(s) did not describe their sessions within ${this.parts.timeout} ms; their sessions are left out`));
    }
    return entry.infos;
  }

  /** Another node asks: this node describes its sessions. */
  onQuestion(origin: string, request: string, own: SessionInfo[]): void {
    if (origin === this.parts.nodeId) return;
    this.parts.answer(origin, request, JSON.stringify(own)).catch((error: unknown) => this.parts.report(unavailable('cannot answer a census', error)));
  }

  /** A node's answer to a census this node asked for. */
  onAnswer(request: string, node: string, payload: string): void {
    const entry = this.asked.get(request);
    if (!entry || !entry.waiting.delete(node)) return;
    const infos = readInfos(payload);
    if (infos instanceof BusFormatError) this.parts.report(new BusFormatError(`node ${node} described its sessions unreadably: ${infos.message}`));
    else entry.infos.push(...infos);
    if (entry.waiting.size === 0) entry.done();
  }
}

function readInfos(payload: string): SessionInfo[] | BusFormatError {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch (error) {
    return new BusFormatError(`not JSON (${(error as Error).message})`);
  }
  if (!Array.isArray(value)) return new BusFormatError('not a list');
  for (const info of value as unknown[]) {
    const candidate = info as Partial<SessionInfo> | null;
    if (
      typeof candidate !== 'object' ||
      candidate === null ||
      typeof candidate.clientId !== 'string' ||
      !(candidate.user === null || typeof candidate.user === 'string') ||
      !Array.isArray(candidate.roles) ||
      !Array.isArray(candidate.subscriptions) ||
      typeof candidate.claims !== 'object' ||
      candidate.claims === null ||
      typeof candidate.data !== 'object' ||
      candidate.data === null
    ) {
      return new BusFormatError(`a session description lacks clientId, user, roles, claims, data or subscriptions: ${JSON.stringify(info).slice(0, 200)}`);
    }
  }
  return value as SessionInfo[];
}
