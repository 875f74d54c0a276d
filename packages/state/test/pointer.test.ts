import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StateError, escapeToken, formatPointer, parsePointer, unescapeToken } from '../src/index.js';

describe('JSON Pointer', () => {
  it('escapes ~ and / per RFC 6901, ~ first', () => {
    assert.equal(escapeToken('a/b'), 'a~1b');
    assert.equal(escapeToken('m~n'), 'm~0n');
    assert.equal(escapeToken('~1'), '~01');
    assert.equal(unescapeToken('~01'), '~1');
    assert.equal(formatPointer(['a/b', 'm~n', 0, '']), '/a~1b/m~0n/0/');
    assert.equal(formatPointer([]), '');
  });

  it('parses the RFC 6901 examples', () => {
    assert.deepEqual(parsePointer(''), []);
    assert.deepEqual(parsePointer('/'), ['']);
    assert.deepEqual(parsePointer('/foo/0'), ['foo', '0']);
    assert.deepEqual(parsePointer('/a~1b'), ['a/b']);
    assert.deepEqual(parsePointer('/m~0n'), ['m~n']);
    assert.deepEqual(parsePointer('/ '), [' ']);
    assert.deepEqual(parsePointer('/~01'), ['~1']);
    for (const tokens of [['a', 'b/c', '~', '~1', '', 'é😀']]) assert.deepEqual(parsePointer(formatPointer(tokens)), tokens);
  });

  it('refuses malformed pointers with StateError ERR_INVALID_POINTER', () => {
    for (const bad of ['a', 'a/b', '/a~', '/a~2', '/~x']) {
      assert.throws(() => parsePointer(bad), (err: unknown) => err instanceof StateError && err.code === 'ERR_INVALID_POINTER', bad);
    }
    assert.throws(() => parsePointer(5 as unknown as string), /must be a string/);
  });
});
