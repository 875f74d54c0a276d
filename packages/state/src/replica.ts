/**
 * A replica of a server's state channel: the server's value, kept up to date by its patches,
 * with this client's own proposals applied on top until the server decides on them.
 *
 * - Start: subscribe to the channel first (patches are held), then take a snapshot through
 *   `/service/state`; held patches newer than the snapshot are applied after it.
 * - Patches are applied in version order. A gap (a version skipped), another epoch (the server's
 *   sequence began anew), or a reconnection whose recovery lost messages takes a new snapshot.
 * - Proposals (`propose`) apply at once to `value` (optimistic), and go to the server one at a
 *   time, in order, each based on the latest version this replica confirmed, so a client never
 *   conflicts with itself. Each carries an id: when its answer is lost (a cut line) it is sent
 *   again and the server, which remembers applied ids, does not apply it twice. The id is random
 *   (another client, which sees the ids of applied proposals in the patches, cannot guess the next
 *   one and claim it). A server that answers it failed (a hook that threw) is asked again twice,
 *   then the proposal is refused. When the server
 *   accepts, the proposal becomes part of the confirmed value with the server's patch; when it
 *   refuses (a conflict, the application's `validate`), it is rolled back and `propose` rejects.
 *   Whenever the confirmed value moves, the pending proposals are applied again on top of it
 *   (rebased); one that no longer applies stays out of `value` until the server says no.
 *
 * Works with any client that can subscribe (with a recovery callback) and make requests: the
 * Perihelion client (`replicate(client, '/todos')`), or an adapter for another.
 */
import { applyPatch } from './apply.js';
import { produce } from './draft.js';
import { diffTrusted, type DiffOptions } from './diff.js';
import { isJsonValue, type JsonValue } from './json.js';
import { parsePointer } from './pointer.js';
import type { Patch } from './operations.js';

export const STATE_SERVICE = '/service/state';

// Timers exist in every environment this runs in (browsers, workers, Node); the package itself is typed without any.
declare function setTimeout(callback: () => void, ms: number): unknown;
// Web Crypto, in browsers and Node (from 19 a global); without it, ids fall back to Math.random.
declare const crypto: { getRandomValues(array: Uint32Array): Uint32Array } | undefined;

/** What a replica needs of a client. */
export interface ReplicaClient {
  subscribe(channel: string, handler: (data: unknown) => void, options?: { onRecover?: (recovered: boolean) => void }): Promise<{ unsubscribe(): Promise<void> }>;
  request(channel: string, data: unknown): Promise<unknown>;
}

export interface ReplicaChange {
  /** The replica's value now (the server's, with pending proposals on top). */
  value: JsonValue;
  /** What changed in `value`: applying it to the previous value gives this one. */
  patch: Patch;
  /** The server's version this value builds on. */
  version: number;
  /** Why: a server patch, a snapshot, a proposal of this replica, or a proposal rolled back. */
  cause: 'server' | 'snapshot' | 'propose' | 'rollback';
}

export interface ReplicaOptions {
  /** How this replica diffs a proposal made by a function, and the changes it reports. */
  diff?: DiffOptions;
  /** Longest wait between two sends of a proposal whose answer was lost, in ms. Default 5000. */
  maxRetryDelay?: number;
}

interface Pending {
  id: string;
  patch: Patch;
  /** The version the server said includes it, once it said so. */
  acceptedAt: number | null;
  resolve: (version: number) => void;
  reject: (error: Error) => void;
}

interface PatchMessage {
  epoch: string;
  version: number;
  patch: Patch;
  proposal?: string;
}

/** A proposal the server refused (or that could not be made): `reason` says why. */
export class ProposalError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'ProposalError';
  }
}

export type ChangeListener = (change: ReplicaChange) => void;

export class Replica {
  private epoch = '';
  private confirmed: JsonValue = null;
  private current = -1;
  private view: JsonValue = null;
  private readonly pending: Pending[] = [];
  private held: PatchMessage[] | null = [];
  private readonly listeners = new Set<ChangeListener>();
  private subscription: { unsubscribe(): Promise<void> } | null = null;
  private syncing: Promise<void> | null = null;
  private sending = false;
  private closed = false;

  constructor(
    private readonly client: ReplicaClient,
    readonly channel: string,
    private readonly options: ReplicaOptions = {},
  ) {}

  /** The value: the server's, with this replica's pending proposals applied on top. */
  get value(): JsonValue {
    return this.view;
  }

  /** The latest server version this replica holds. */
  get version(): number {
    return this.current;
  }

  /** Proposals sent or waiting, not yet decided by the server. */
  get pendingCount(): number {
    return this.pending.filter((p) => p.acceptedAt === null).length;
  }

  /** Calls `listener` on every change of `value`; returns a function that stops it. */
  onChange(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Subscribes and takes the first snapshot (`replicate` does this). */
  async start(): Promise<this> {
    this.subscription = await this.client.subscribe(this.channel, (data) => this.receive(data), {
      onRecover: (recovered) => {
        if (!recovered) void this.resync();
      },
    });
    try {
      await this.resync();
    } catch (error) {
      // No replica: nothing of it stays subscribed.
      this.closed = true;
      await this.subscription.unsubscribe().catch(() => {});
      throw error;
    }
    return this;
  }

  /**
   * Proposes a change: a JSON Patch, or a function given a draft of `value` (see `produce`) that
   * changes it in place or returns the new value. Applied to `value` at once; resolves to the server
   * version that includes it, rejects with a ProposalError when the server refuses it (and
   * `value` goes back to the server's), or at once, sending nothing, when the change cannot be
   * made here (its `cause` says why).
   */
  propose(change: Patch | ((draft: JsonValue) => JsonValue | void)): Promise<number> {
    if (this.closed) return Promise.reject(new ProposalError(`the replica of ${this.channel} is closed`));
    let patch: Patch;
    let next: JsonValue;
    try {
      if (typeof change === 'function') {
        patch = diffTrusted(this.view, produce(this.view, change, { diff: this.options.diff }), this.options.diff);
      } else if (Array.isArray(change)) patch = change;
      else throw new Error('propose takes a JSON Patch (an array of operations) or a function given a draft');
      if (patch.length === 0) return Promise.resolve(this.current);
      patch = appendsAsDash(this.view, patch);
      next = applyPatch(this.view, patch);
    } catch (error) {
      // Nothing is sent and `value` stays: a patch that does not apply here, a draft left with
      // something JSON cannot hold (StateError, naming where), or the function's own error.
      return Promise.reject(new ProposalError(`a proposal on ${this.channel} could not be made: ${(error as Error)?.message ?? String(error)}`, error));
    }
    const before = this.view;
    this.view = next;
    return new Promise<number>((resolve, reject) => {
      this.pending.push({ id: randomId(), patch, acceptedAt: null, resolve, reject });
      this.emit(before, 'propose', patch);
      void this.send();
    });
  }

  /** Stops following the channel; pending proposals reject. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Sent ones may still be applied by the server: closing stops the waiting, not the proposal.
    for (const p of this.pending.splice(0)) p.reject(new ProposalError(`the replica of ${this.channel} was closed before the server's answer came (a proposal already sent may still be applied)`));
    await this.subscription?.unsubscribe();
  }

  // ---------------------------------------------------------------- from the server

  private receive(data: unknown): void {
    const message = data as PatchMessage | null;
    if (typeof message !== 'object' || message === null || typeof message.epoch !== 'string' || !Number.isSafeInteger(message.version) || !Array.isArray(message.patch)) return;
    if (this.held) {
      this.held.push(message);
      return;
    }
    this.applyServerPatch(message);
  }

  private applyServerPatch(message: PatchMessage): void {
    if (message.epoch !== this.epoch || message.version > this.current + 1) {
      void this.resync();
      return;
    }
    if (message.version <= this.current) {
      // Already had it (a recovery replays what a snapshot held); it may still say that the
      // snapshot holds one of this replica's proposals, whose answer has not come.
      if (this.markAccepted(message) && this.settleAccepted()) this.rebase('server');
      return;
    }
    try {
      this.confirmed = applyPatch(this.confirmed, message.patch);
    } catch {
      void this.resync();
      return;
    }
    // With nothing of its own on top, the value moved by exactly the server's patch.
    const alone = this.pending.length === 0;
    this.current = message.version;
    this.markAccepted(message);
    this.settleAccepted();
    this.rebase('server', alone ? message.patch : undefined);
  }

  /** A patch that applied one of this replica's proposals: that proposal is accepted at its version. */
  private markAccepted(message: PatchMessage): boolean {
    if (message.proposal === undefined) return false;
    const mine = this.pending.find((p) => p.id === message.proposal);
    if (!mine) return false;
    mine.acceptedAt = message.version;
    return true;
  }

  /** Takes a snapshot (one at a time), then applies the patches held meanwhile. */
  private resync(): Promise<void> {
    if (this.syncing) return this.syncing;
    const run: Promise<void> = this.snapshot().finally(() => {
      if (this.syncing === run) this.syncing = null;
    });
    this.syncing = run;
    return run;
  }

  private async snapshot(): Promise<void> {
    this.held ??= [];
    let snapshot: { epoch: string; version: number; value: JsonValue };
    try {
      snapshot = (await this.client.request(STATE_SERVICE, { channel: this.channel, op: 'snapshot' })) as typeof snapshot;
      // Checked once here, so that every value made from it afterwards is known to be JSON.
      const { epoch, version, value } = (snapshot ?? {}) as Partial<typeof snapshot>;
      if (typeof epoch !== 'string' || !Number.isSafeInteger(version) || (version as number) < 0 || !isJsonValue(value)) {
        throw new Error(`the snapshot of ${this.channel} is not {epoch, version, value} with a JSON value: ${String(JSON.stringify(snapshot)).slice(0, 200)}`);
      }
    } catch (error) {
      // The first snapshot's failure is start()'s; a later one is tried again (patches stay held).
      if (this.epoch === '') throw error;
      if (!this.closed) setTimeout(() => void this.resync(), 1000);
      return;
    }
    if (this.closed) return;
    if (snapshot.epoch !== this.epoch) {
      // Versions of another epoch mean nothing here: proposals it accepted are sent again on the new one.
      for (const p of this.pending) p.acceptedAt = null;
    }
    this.epoch = snapshot.epoch;
    this.confirmed = snapshot.value;
    this.current = snapshot.version;
    const held = this.held ?? [];
    this.held = null;
    this.settleAccepted();
    this.rebase('snapshot');
    // What arrived meanwhile, in order; a gap among it takes another snapshot, after this one.
    this.syncing = null;
    for (const message of held.sort((a, b) => a.version - b.version)) if (!this.held) this.applyServerPatch(message);
    void this.send();
  }

  /** Proposals the confirmed value now includes leave the pending list; true if any did. */
  private settleAccepted(): boolean {
    let settled = false;
    for (let i = 0; i < this.pending.length; i++) {
      const p = this.pending[i]!;
      if (p.acceptedAt !== null && p.acceptedAt <= this.current) {
        this.pending.splice(i--, 1);
        p.resolve(p.acceptedAt);
        settled = true;
      }
    }
    return settled;
  }

  /**
   * `value` = the confirmed value with the pending proposals on top (those that still apply).
   * `applied`: the server patch that moved the confirmed value, given when `value` was the
   * confirmed value before it (no proposal of this replica on top): then it is what `value` did,
   * and the listeners are told it without a diff of the whole value.
   */
  private rebase(cause: ReplicaChange['cause'], applied?: Patch): void {
    const before = this.view;
    if (applied !== undefined) {
      this.view = this.confirmed;
      this.emit(before, cause, applied);
      return;
    }
    let view = this.confirmed;
    for (const p of this.pending) {
      try {
        view = applyPatch(view, p.patch);
      } catch {
        // No longer applies: the server will refuse it; meanwhile it is not shown.
      }
    }
    this.view = view;
    this.emit(before, cause);
  }

  private emit(before: JsonValue, cause: ReplicaChange['cause'], known?: Patch): void {
    if (this.listeners.size === 0) return;
    const patch = known ?? diffTrusted(before, this.view, this.options.diff);
    if (patch.length === 0 && cause !== 'snapshot') return;
    const change: ReplicaChange = { value: this.view, patch, version: this.current, cause };
    for (const listener of this.listeners) listener(change);
  }

  // ---------------------------------------------------------------- proposals to the server

  /** Sends the pending proposals one at a time, in order, each on the latest confirmed version. */
  private async send(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      let delay = 250;
      let failures = 0;
      for (;;) {
        const next = this.pending.find((p) => p.acceptedAt === null);
        if (!next || this.closed || this.held) return;
        try {
          const answer = (await this.client.request(STATE_SERVICE, { channel: this.channel, op: 'propose', epoch: this.epoch, base: this.current, patch: next.patch, id: next.id })) as { version: number };
          delay = 250;
          failures = 0;
          if (!this.pending.includes(next)) continue;
          next.acceptedAt = answer.version;
          // Already confirmed (a snapshot taken while the answer was on its way holds it): the
          // view had it applied twice, once in the confirmed value and once on top of it.
          if (this.settleAccepted()) this.rebase('server');
        } catch (error) {
          if (!this.pending.includes(next)) continue;
          const failed = isServerFailure(error);
          if (failed) failures++;
          if (!isRefusal(error) && !(failed && failures >= MAX_FAILED_ATTEMPTS)) {
            // No answer (a cut line, a timeout, a 503), or the server failed (a hook that threw):
            // the same proposal again, later; the server applies an id once. A failure that
            // repeats is the server's answer.
            await new Promise<void>((resolve) => setTimeout(() => resolve(), delay));
            delay = Math.min(delay * 2, this.options.maxRetryDelay ?? 5000);
            continue;
          }
          delay = 250;
          failures = 0;
          if (isConflictOnEpoch(error) && this.epoch !== '') {
            // The server's state began anew: take it, then send this proposal again on it.
            await this.resync();
            continue;
          }
          this.pending.splice(this.pending.indexOf(next), 1);
          this.rebase('rollback');
          next.reject(new ProposalError(`the server refused a proposal on ${this.channel}: ${(error as Error).message}`, error));
        }
      }
    } finally {
      this.sending = false;
    }
  }
}

/**
 * The patch with each `add` at an array's end written as `<array>/-`: an append does not depend
 * on the array's length, so the server can rebase it over other clients' appends.
 */
function appendsAsDash(value: JsonValue, patch: Patch): Patch {
  let current = value;
  return patch.map((op) => {
    let out = op;
    if (op.op === 'add') {
      const cut = op.path.lastIndexOf('/');
      const parent = at(current, op.path.slice(0, cut));
      if (Array.isArray(parent) && op.path.slice(cut + 1) === String(parent.length)) out = { ...op, path: `${op.path.slice(0, cut)}/-` };
    }
    current = applyPatch(current, [out]);
    return out;
  });
}

/** The value at a JSON Pointer, or undefined. */
function at(value: JsonValue, pointer: string): JsonValue | undefined {
  let node: JsonValue | undefined = value;
  for (const token of parsePointer(pointer)) {
    if (Array.isArray(node)) node = /^(0|[1-9]\d*)$/.test(token) ? node[Number(token)] : undefined;
    else if (typeof node === 'object' && node !== null) node = Object.prototype.hasOwnProperty.call(node, token) ? node[token] : undefined;
    else return undefined;
  }
  return node;
}

/** Sends of a proposal the server answers with a failure (500) before it counts as refused. */
const MAX_FAILED_ATTEMPTS = 3;

/** The server answered no (an unsuccessful reply), as opposed to no answer at all. */
function isRefusal(error: unknown): boolean {
  const e = error as { code?: unknown; bayeuxCode?: unknown } | null;
  return e?.code === 'bayeux' && typeof e.bayeuxCode === 'number' && e.bayeuxCode < 500;
}

/**
 * The server answered that it failed to decide (500: a hook that threw or timed out), which asking
 * again may not mend. A 503 (the cluster unreachable, the server overloaded) is taken as no
 * answer: the proposal is sent again until one comes.
 */
function isServerFailure(error: unknown): boolean {
  const e = error as { code?: unknown; bayeuxCode?: unknown } | null;
  return e?.code === 'bayeux' && e.bayeuxCode === 500;
}

/** A proposal id no other client can guess: 128 random bits. */
function randomId(): string {
  const words = new Uint32Array(4);
  if (typeof crypto !== 'undefined' && typeof crypto.getRandomValues === 'function') crypto.getRandomValues(words);
  else for (let i = 0; i < words.length; i++) words[i] = Math.floor(Math.random() * 2 ** 32);
  return Array.from(words, (word) => word.toString(36).padStart(7, '0')).join('');
}

function isConflictOnEpoch(error: unknown): boolean {
  return /the state was reset/.test(String((error as Error).message));
}

/** Follows a state channel: resolves once the replica holds its first snapshot. */
export function replicate(client: ReplicaClient, channel: string, options: ReplicaOptions = {}): Promise<Replica> {
  return new Replica(client, channel, options).start();
}
