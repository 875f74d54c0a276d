import { StateError } from './errors.js';

/** Escape one reference token for a JSON Pointer (RFC 6901): `~` as `~0`, `/` as `~1`. */
export function escapeToken(token: string | number): string {
  const s = String(token);
  if (s.indexOf('~') === -1 && s.indexOf('/') === -1) return s;
  return s.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** Undo escapeToken. Assumes a well-formed token (every `~` followed by 0 or 1). */
export function unescapeToken(token: string): string {
  if (token.indexOf('~') === -1) return token;
  return token.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** Tokens to a JSON Pointer: `['a/b', 0]` gives `/a~1b/0`; `[]` gives `''` (the root). */
export function formatPointer(tokens: readonly (string | number)[]): string {
  let out = '';
  for (const t of tokens) out += '/' + escapeToken(t);
  return out;
}

const BAD_ESCAPE = /~(?![01])/;

/**
 * A JSON Pointer to its unescaped tokens: `/a~1b/0` gives `['a/b', '0']`, `''` gives `[]`.
 * Throws StateError ERR_INVALID_POINTER if it is not a string, does not start with `/`
 * (unless empty), or has a `~` not followed by `0` or `1`.
 */
export function parsePointer(pointer: string): string[] {
  if (typeof pointer !== 'string') {
    throw new StateError('ERR_INVALID_POINTER', `A JSON Pointer must be a string, not ${typeof pointer}`, '');
  }
  if (pointer === '') return [];
  if (pointer.charCodeAt(0) !== 47 /* / */) {
    throw new StateError('ERR_INVALID_POINTER', `JSON Pointer ${JSON.stringify(pointer)} must be empty or start with "/"`, pointer);
  }
  if (BAD_ESCAPE.test(pointer)) {
    throw new StateError('ERR_INVALID_POINTER', `JSON Pointer ${JSON.stringify(pointer)} has a "~" not followed by "0" or "1"`, pointer);
  }
  const parts = pointer.split('/');
  parts.shift();
  for (let i = 0; i < parts.length; i++) parts[i] = unescapeToken(parts[i]!);
  return parts;
}
