/**
 * A state channel: a JSON value the server owns, replicated to clients as RFC 6902 patches.
 *
 * Every change, whether the application's (`update`) or a client's proposal (`propose`), runs in
 * one queue, so versions follow one order. A change that alters nothing publishes nothing. A
 * change is saved (the `save` hook) before it is published, and published as an ordinary server
 * broadcast `{epoch, version, patch}` on the channel, so it goes through history and a client
 * that reconnects recovers the patches it missed; a client that missed too much asks for a
 * snapshot (state-service.ts). The epoch changes whenever the version sequence starts anew (a new
 * process without a saved version): a replica seeing another epoch takes a snapshot.
 *
 * Proposals based on an older version are rebased when nothing they rely on changed since (the
 * rule is rebase.ts: appends to a list always go through, an edit of what changed does not). A
 * proposal that conflicts, or is older than the patches kept (`rebaseWindow`), is refused as a
 * conflict; its client rolls it back and may propose again on the new value. The check costs the
 * length of the proposal's paths per version since its base (ChangeIndex), and a proposal whose
 * check would pass `MAX_REBASE_CHECKS` is refused as a conflict without it.
 *
 * A proposal's id makes a resend (its answer was lost) idempotent: the server remembers the ids
 * it applied with a digest of their patch, and answers a resend with the version it got. An id
 * that comes back with another patch is refused: it is not the same proposal.
 */
import { createHash, randomBytes } from 'node:crypto';
import { applyPatch, assertJson, clone, cloneChanges, diff, diffTrusted, produce, StateError, type DiffOptions, type JsonValue, type Patch } from '@perihelion/state';
import { sharedAnswer } from '../core/replies.js';
import type { Session } from '../core/session.js';
import { PerihelionError } from '../errors.js';
import { ChangeIndex, reliancesOf } from './rebase.js';

/** A value as saved: the value and the version it had. */
export interface SavedState {
  value: JsonValue;
  version: number;
}

/** What the `validate` hook is asked about a client's proposal. */
export interface ProposalCheck {
  channel: string;
  session: Session;
  /** The patch as proposed (already rebased onto the current value when it was based on an older one). */
  patch: Patch;
  /** The value now, and what it would be with the proposal applied. */
  current: JsonValue;
  next: JsonValue;
}

export interface StateOptions {
  /** Loads the value when the channel is created (a database, say); undefined: start from `initial`. */
  load?: () => SavedState | undefined | Promise<SavedState | undefined>;
  /** Saves each new version before it is published; if it throws, the change is not made. */
  save?: (change: SavedState & { patch: Patch }) => void | Promise<void>;
  /**
   * Decides on a client's proposal: true accepts; a string refuses with that reason; anything
   * else refuses. Without it, the channel takes no proposals.
   */
  validate?: (check: ProposalCheck) => boolean | string | undefined | Promise<boolean | string | undefined>;
  /** How arrays are diffed (identity keys per path). */
  diff?: DiffOptions;
  /** Patches kept for rebasing proposals made on an older version. Default 100. */
  rebaseWindow?: number;
  /**
   * Longest wait for `validate`, in ms (default 10000; 0: no limit). A proposal it has not decided
   * on by then is refused as a server error, and the changes behind it go on.
   */
  validateTimeout?: number;
}

const OPTION_NAMES = ['load', 'save', 'validate', 'diff', 'rebaseWindow', 'validateTimeout'];
const DIFF_OPTION_NAMES = ['key', 'keys', 'maxLcsCells', 'maxDepth'];

/** What is published on the channel for each version. */
export interface StatePatchMessage {
  epoch: string;
  version: number;
  patch: Patch;
  /** For a client's proposal: its id, and the session that made it. */
  proposal?: string;
  by?: string;
}

/** A proposal refused: the Bayeux error kind and the reason. */
export class ProposalRefusal extends Error {
  constructor(
    readonly kind: 'conflict' | 'invalid' | 'refused' | 'failed',
    reason: string,
  ) {
    super(reason);
    this.name = 'ProposalRefusal';
  }
}

export interface StateHost {
  /** Publishes one version's message on the channel to every subscriber (through history). */
  publish(channel: string, message: StatePatchMessage): Promise<unknown>;
  reportError(error: unknown): void;
  /** The channel is closed: it is no longer served (and its name may be used again, once this settles). */
  closed(channel: string): void | Promise<void>;
}

const DEFAULT_REBASE_WINDOW = 100;
const MAX_REBASE_WINDOW = 100_000;
const DEFAULT_VALIDATE_TIMEOUT = 10_000;
const MAX_VALIDATE_TIMEOUT = 3_600_000;
/** Proposal ids remembered for resends. */
const MAX_REMEMBERED_PROPOSALS = 10_000;
/**
 * Most (operation, version) pairs one proposal's rebase check may look at: a proposal of 2 000
 * operations may be 100 versions behind, one of 20 000 only 10.
 */
const MAX_REBASE_CHECKS = 200_000;

/**
 * `T` is the value's shape as the application sees it (any JSON); the channel checks every value
 * it is given, whatever the type says.
 */
export class StateChannel<T extends JsonValue = JsonValue> {
  readonly channel: string;
  /** Changes when the version sequence starts anew; replicas of another epoch take a snapshot. */
  readonly epoch = randomBytes(6).toString('base64url');
  private value: JsonValue;
  private current = 0;
  /** The snapshot answer of the current version, once asked for (see `snapshot`). */
  private snapshotAnswer: { channel: string; epoch: string; version: number; value: JsonValue } | null = null;
  /** What the latest published patches changed, oldest first, for rebasing proposals. */
  private readonly recent: Array<{ version: number; changes: ChangeIndex }> = [];
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * Ids of proposals already applied, with their version and a digest of their patch: a client
   * resending one (its answer was lost, or its session too) is told again.
   */
  private readonly applied = new Map<string, { version: number; digest: string }>();
  private closed = false;

  private constructor(
    channel: string,
    saved: SavedState,
    private readonly options: StateOptions,
    private readonly host: StateHost,
  ) {
    this.channel = channel;
    this.value = saved.value;
    this.current = saved.version;
  }

  /** Creates the channel: the loaded value (checked) or a copy of `initial`. */
  static async create<T extends JsonValue>(channel: string, initial: T, options: StateOptions, host: StateHost): Promise<StateChannel<T>> {
    checkOptions(options);
    const loaded = options.load ? await options.load() : undefined;
    let saved: SavedState;
    if (loaded === undefined) saved = { value: clone(checked(initial, 'the initial value')), version: 0 };
    else {
      if (typeof loaded !== 'object' || loaded === null || !Number.isSafeInteger(loaded.version) || loaded.version < 0) {
        throw new PerihelionError('ERR_INVALID_ARGUMENT', `load() must resolve to { value, version } (a whole version ≥ 0) or undefined, got ${JSON.stringify(loaded)?.slice(0, 200)}`);
      }
      saved = { value: checked(loaded.value, 'the loaded value'), version: loaded.version };
    }
    return new StateChannel<T>(channel, saved, options, host);
  }

  /** The current value. Read it, never change it: changes go through `update`. */
  get(): T {
    return this.value as T;
  }

  /** False once closed (by the application, the server's shutdown, or another node that took it over). */
  get isOpen(): boolean {
    return !this.closed;
  }

  get version(): number {
    return this.current;
  }

  /**
   * The answer to a snapshot request, `{channel, epoch, version, value}`: one object per version,
   * serialised once however many replicas ask (they all do after a restart, and a value may be
   * megabytes).
   */
  snapshot(): { channel: string; epoch: string; version: number; value: JsonValue } {
    if (this.snapshotAnswer?.version !== this.current) {
      this.snapshotAnswer = sharedAnswer({ channel: this.channel, epoch: this.epoch, version: this.current, value: this.value });
    }
    return this.snapshotAnswer;
  }

  /**
   * Changes the value: `change` is the new value, or a function given a draft of the value
   * (copied on write: see `produce`) that it changes in place or replaces by returning a new
   * value. Resolves to the patch published ([] when nothing changed, and nothing was published).
   */
  update(change: T | ((draft: T) => T | void)): Promise<Patch> {
    return this.enqueue(async () => {
      let value: JsonValue;
      // What the function itself threw, told apart from the checks of its result: it may be a
      // StateError too (a patch it applied that failed), and is its caller's as it threw it.
      let thrown: unknown;
      const run = (draft: JsonValue): unknown => {
        try {
          return (change as (draft: JsonValue) => unknown)(draft);
        } catch (error) {
          thrown = error;
          throw error;
        }
      };
      try {
        // A draft copies on write: the change costs what it touches, and the new value shares
        // the rest with the current one. A value the caller handed in stays the caller's
        // (changing it later must not change the state): checked and copied, but for the parts
        // it took from the current value (made the immutable way), which are the state's own.
        value = typeof change === 'function' ? produce(this.value, run, { diff: this.options.diff }) : cloneChanges(change, this.value);
      } catch (error) {
        if (error === thrown || !(error instanceof StateError)) throw error;
        throw new PerihelionError('ERR_INVALID_ARGUMENT', error.code === 'ERR_DRAFT_RESULT' ? `update: ${error.message}` : `the new value is not JSON: ${error.message}`);
      }
      const patch = diffTrusted(this.value, value, this.options.diff);
      if (patch.length === 0) return patch;
      await this.commit(value, patch, {});
      return patch;
    });
  }

  /**
   * A client's proposal made on version `base` of epoch `epoch`: rebased when nothing it touches
   * changed since, checked by `validate`, then applied and published like an update. Rejects with
   * a ProposalRefusal saying why not.
   */
  propose(session: Session, proposal: { epoch: string; base: number; patch: Patch; id?: string }): Promise<number> {
    return this.enqueue(async () => {
      const { validate } = this.options;
      if (!validate) throw new ProposalRefusal('refused', `${this.channel} takes no proposals`);
      const digest = proposal.id === undefined ? '' : digestOf(proposal.patch);
      const done = proposal.id === undefined ? undefined : this.applied.get(proposal.id);
      if (done !== undefined) {
        if (done.digest === digest) return done.version;
        throw new ProposalRefusal('invalid', `the proposal id ${JSON.stringify(proposal.id)} was used by another proposal; give each proposal an id of its own`);
      }
      if (proposal.epoch !== this.epoch) throw new ProposalRefusal('conflict', `the state was reset (epoch ${this.epoch}); take a snapshot and propose again`);
      if (proposal.base > this.current) throw new ProposalRefusal('invalid', `version ${proposal.base} is ahead of the server's ${this.current}`);
      // Applied first: a malformed patch is refused whatever its base, and one that does not
      // apply needs no rebase check (it is refused either way).
      let next: JsonValue;
      try {
        next = applyPatch(this.value, proposal.patch);
      } catch (error) {
        if (!(error instanceof StateError)) throw error;
        if (error.code !== 'ERR_PATCH_FAILED') throw new ProposalRefusal('invalid', `the patch is malformed: ${error.message}`);
        throw new ProposalRefusal(proposal.base < this.current ? 'conflict' : 'invalid', `the patch does not apply: ${error.message}`);
      }
      if (proposal.base < this.current) this.checkRebase(proposal.base, proposal.patch);
      try {
        const verdict = await this.decide(validate, { channel: this.channel, session, patch: proposal.patch, current: this.value, next });
        if (verdict !== true) throw new ProposalRefusal('refused', typeof verdict === 'string' && verdict !== '' ? verdict : 'refused by the application');
        // Published as the server would diff it: replicas apply the same canonical patch whatever the proposer sent.
        const patch = diffTrusted(this.value, next, this.options.diff);
        if (patch.length > 0) await this.commit(next, patch, { proposal: proposal.id, digest, by: session.id });
        else if (proposal.id !== undefined) this.remember(proposal.id, this.current, digest);
      } catch (error) {
        if (error instanceof ProposalRefusal) throw error;
        // A validate or save hook that threw or a validate that did not answer in time: the
        // proposer is answered (a server error: it may send the proposal again, and an id is
        // applied once) and the application is told.
        this.host.reportError(error);
        throw new ProposalRefusal('failed', 'the server failed to decide on the proposal (its log says why)');
      }
      return this.current;
    });
  }

  /**
   * Stops taking changes; pending ones finish. The channel is then no longer served: snapshots
   * and proposals are refused as for a channel that is not a state channel, and its name may be
   * given to a new one.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.queue.catch(() => {});
    } finally {
      await this.host.closed(this.channel);
    }
  }

  /** `validate`'s verdict, within validateTimeout. */
  private decide(validate: NonNullable<StateOptions['validate']>, check: ProposalCheck): Promise<boolean | string | undefined> {
    const limit = this.options.validateTimeout ?? DEFAULT_VALIDATE_TIMEOUT;
    const verdict = Promise.resolve().then(() => validate(check));
    if (limit === 0) return verdict;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PerihelionError('ERR_HOOK_TIMEOUT', `validate did not decide on a proposal on ${this.channel} within ${limit} ms (validateTimeout): refused`)), limit);
    });
    return Promise.race([verdict, late]).finally(() => clearTimeout(timer));
  }

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new PerihelionError('ERR_SERVER_CLOSED', `the state channel ${this.channel} is closed`));
    const run = this.queue.then(task);
    this.queue = run.catch(() => {});
    return run;
  }

  /** A proposal id applied, for its resends (remembered before publishing, which may fail). */
  private remember(id: string, version: number, digest: string): void {
    this.applied.set(id, { version, digest });
    if (this.applied.size > MAX_REMEMBERED_PROPOSALS) this.applied.delete(this.applied.keys().next().value!);
  }

  /** A proposal on an older version may be rebased only if nothing it touches changed since. */
  private checkRebase(base: number, patch: Patch): void {
    const since = this.recent.filter((entry) => entry.version > base);
    if (since.length < this.current - base) {
      throw new ProposalRefusal('conflict', `version ${base} is older than the ${this.recent.length} changes kept for rebasing; take a snapshot and propose again`);
    }
    const reliances = reliancesOf(patch);
    if (reliances.length * since.length > MAX_REBASE_CHECKS) {
      throw new ProposalRefusal('conflict', `a proposal of ${patch.length} operations is too large to rebase over ${since.length} changes; take a snapshot and propose again`);
    }
    for (const entry of since) {
      const clash = entry.changes.conflict(reliances);
      if (clash !== null) throw new ProposalRefusal('conflict', `${clash} changed since version ${base} (at version ${entry.version})`);
    }
  }

  /**
   * Saves, makes and publishes a version. Once saved, the change is made whatever the publish
   * does: a publish that fails is reported, and replicas, which then see a version skipped at the
   * next change, take a snapshot.
   */
  private async commit(value: JsonValue, patch: Patch, from: { proposal?: string | undefined; digest?: string; by?: string }): Promise<void> {
    const version = this.current + 1;
    if (this.options.save) await this.options.save({ value, version, patch });
    this.value = value;
    this.current = version;
    // The old version's snapshot (and its serialised text, maybe megabytes) is not kept for nothing.
    this.snapshotAnswer = null;
    const window = this.options.rebaseWindow ?? DEFAULT_REBASE_WINDOW;
    if (window > 0) this.recent.push({ version, changes: new ChangeIndex(patch) });
    while (this.recent.length > window) this.recent.shift();
    if (from.proposal !== undefined) this.remember(from.proposal, version, from.digest ?? '');
    const message: StatePatchMessage = { epoch: this.epoch, version, patch };
    if (from.proposal !== undefined) message.proposal = from.proposal;
    if (from.by !== undefined) message.by = from.by;
    try {
      await this.host.publish(this.channel, message);
    } catch (error) {
      this.host.reportError(new PerihelionError('ERR_NOT_PUBLISHED', `version ${version} of ${this.channel} was made and saved, but its patch could not be published (replicas take a snapshot at the next change): ${(error as Error)?.message ?? String(error)}`));
    }
  }
}

/** Checks a state channel's options, naming the one at fault. */
function checkOptions(options: unknown): asserts options is StateOptions {
  const fail = (message: string): never => {
    throw new PerihelionError('ERR_INVALID_ARGUMENT', message);
  };
  if (typeof options !== 'object' || options === null || Array.isArray(options)) fail(`the state options must be an object like { validate, save, load }, got ${JSON.stringify(options)}`);
  const given = options as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!OPTION_NAMES.includes(key)) fail(`unknown state option "${key}"; the options are ${OPTION_NAMES.join(', ')}`);
  }
  for (const hook of ['load', 'save', 'validate']) {
    if (given[hook] !== undefined && typeof given[hook] !== 'function') fail(`the state option ${hook} must be a function`);
  }
  const whole = (name: string, max: number): void => {
    const value = given[name];
    if (value !== undefined && (!Number.isInteger(value) || (value as number) < 0 || (value as number) > max)) fail(`${name} must be a whole number from 0 to ${max}, got ${JSON.stringify(value)}`);
  };
  whole('rebaseWindow', MAX_REBASE_WINDOW);
  whole('validateTimeout', MAX_VALIDATE_TIMEOUT);
  if (given.diff !== undefined) {
    if (typeof given.diff !== 'object' || given.diff === null || Array.isArray(given.diff)) fail(`the state option diff must be an object like { key: 'id' }, got ${JSON.stringify(given.diff)}`);
    for (const key of Object.keys(given.diff as object)) {
      if (!DIFF_OPTION_NAMES.includes(key)) fail(`unknown diff option "${key}"; the diff options are ${DIFF_OPTION_NAMES.join(', ')}`);
    }
    try {
      // Read at each change: checked now, not at the first update.
      diff(null, null, given.diff as DiffOptions);
    } catch (error) {
      fail(`the state option ${(error as Error).message}`);
    }
  }
}

/** A digest of a proposal's patch, to tell its resend from another proposal with the same id. */
function digestOf(patch: Patch): string {
  return createHash('sha256').update(JSON.stringify(patch)).digest('base64url');
}

function checked(value: unknown, what: string): JsonValue {
  try {
    assertJson(value);
  } catch (error) {
    throw new PerihelionError('ERR_INVALID_ARGUMENT', `${what} is not JSON: ${(error as Error).message}`);
  }
  return value;
}
