/**
 * The one error this package throws. `code` says what went wrong, `path` says
 * where (a JSON Pointer into the value, or the op's path for a patch), and
 * `index` says which op of a patch, when a patch was being applied.
 */
export type StateErrorCode =
  /** A value JSON cannot hold: undefined, a function, NaN, a Date, a cycle... */
  | 'ERR_NOT_JSON'
  /** Nesting deeper than the depth limit (default 1000). */
  | 'ERR_TOO_DEEP'
  /** A malformed JSON Pointer string. */
  | 'ERR_INVALID_POINTER'
  /** A patch that is not a well-formed RFC 6902 patch (bad op, bad pointer, missing member). */
  | 'ERR_INVALID_PATCH'
  /** A bad option to diff. */
  | 'ERR_INVALID_OPTION'
  /** A well-formed op that cannot apply to this document (missing path, failed test, bad index). */
  | 'ERR_PATCH_FAILED'
  /** A draft function returned something that cannot be taken as the new value (see `produce`). */
  | 'ERR_DRAFT_RESULT';

export class StateError extends Error {
  override name = 'StateError';
  readonly code: StateErrorCode;
  /** JSON Pointer of the offending place ('' is the root). */
  readonly path: string;
  /** Index of the offending op in the patch, for errors from applyPatch. */
  readonly index: number | undefined;

  constructor(code: StateErrorCode, message: string, path: string, index?: number) {
    super(message);
    this.code = code;
    this.path = path;
    this.index = index;
  }
}
