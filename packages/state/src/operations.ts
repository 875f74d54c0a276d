import type { JsonValue } from './json.js';

/** RFC 6902 operations. `path` and `from` are JSON Pointers (RFC 6901). */
export interface AddOperation {
  op: 'add';
  path: string;
  value: JsonValue;
}
export interface RemoveOperation {
  op: 'remove';
  path: string;
}
export interface ReplaceOperation {
  op: 'replace';
  path: string;
  value: JsonValue;
}
export interface MoveOperation {
  op: 'move';
  from: string;
  path: string;
}
export interface CopyOperation {
  op: 'copy';
  from: string;
  path: string;
}
export interface TestOperation {
  op: 'test';
  path: string;
  value: JsonValue;
}

export type Operation = AddOperation | RemoveOperation | ReplaceOperation | MoveOperation | CopyOperation | TestOperation;

/** An RFC 6902 JSON Patch: operations applied in order, each to the result of the last. */
export type Patch = Operation[];
