import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addToExt, asPosition, formatPosition, isPositionedOn, parsePosition, serialiseExtLast } from '../src/index.js';

describe('positions', () => {
  it('accepts well-formed positions and refuses everything else', () => {
    assert.deepEqual(asPosition({ epoch: 'k3x', offset: 0 }), { epoch: 'k3x', offset: 0 });
    assert.deepEqual(asPosition({ epoch: 'k3x', offset: 42, extra: 1 }), { epoch: 'k3x', offset: 42 });
    for (const bad of [null, 'k3x:1', [], {}, { epoch: '', offset: 1 }, { epoch: 'x'.repeat(65), offset: 1 }, { epoch: 'a', offset: -1 }, { epoch: 'a', offset: 1.5 }, { epoch: 'a', offset: '1' }, { epoch: 1, offset: 1 }, { epoch: 'a', offset: 2 ** 60 }]) {
      assert.equal(asPosition(bad), null, JSON.stringify(bad));
    }
  });

  it('round-trips the URL form', () => {
    assert.equal(formatPosition({ epoch: 'k3x', offset: 7 }), 'k3x:7');
    assert.deepEqual(parsePosition('k3x:7'), { epoch: 'k3x', offset: 7 });
    assert.deepEqual(parsePosition('a:b:7'), { epoch: 'a:b', offset: 7 });
    for (const bad of ['', ':7', 'k3x', 'k3x:', 'k3x:-1', 'k3x:1e3', 'k3x:9999999999999999']) assert.equal(parsePosition(bad), null, bad);
  });
});

describe('adding to ext without serialising again', () => {
  const position = { epoch: 'e1', offset: 3 };
  const cases: object[] = [
    { channel: '/a', data: { x: 1 } },
    { channel: '/a', data: 'text', ext: {} },
    { channel: '/a', data: 1, ext: { trace: 'z' } },
    { channel: '/a', ext: { nested: { ext: {} } }, data: [1, '}}'] },
    { channel: '/a', data: null, ext: { ext: {} } },
    { channel: '/a', data: '"ext":{}}', ext: { s: '"ext":{}}' } },
    { channel: '/a', data: 0, ext: { gone: undefined } },
    { channel: '/a', data: 0, ext: 'not an object' },
    { channel: '/a', data: 0, ext: new Date(0) },
    { channel: '/a', data: undefined, id: '7' },
    { id: '8', channel: '/a', data: () => 1, clientId: 'c"1', 'odd "key"': true },
    { channel: '/a', data: 1, ext: () => 1 },
    { channel: '/a', data: { toJSON: () => 'as text' } },
    Object.assign(new (class Message {})(), { data: [1], channel: '/a' }),
    // In order already (channel first, ext last or absent): serialised in one call.
    { channel: '/a', data: 1, ext: undefined },
    { channel: '/a', ext: undefined, data: 1 },
    { channel: '/a', id: '9', data: { ext: { a: 1 } }, ext: { z: [1] } },
    { channel: '/a', data: 1, ext: { a: 1 }, id: '10' },
    { 0: 'zero', channel: '/a', data: 1, ext: {} },
  ];
  for (const message of cases) {
    it(`gives the same result as serialising the whole message: ${JSON.stringify(message)}`, () => {
      const serialised = serialiseExtLast(message);
      const text = addToExt(serialised, message, 'position', position);
      const parsed = JSON.parse(text) as { ext: Record<string, unknown> };
      const ext = (message as { ext?: unknown }).ext;
      const expectedExt = typeof ext === 'object' && ext !== null && !(ext instanceof Date) ? { ...JSON.parse(JSON.stringify(ext)), position } : { position };
      assert.deepEqual(parsed, { ...JSON.parse(JSON.stringify(message)), ext: expectedExt });
      // ext is the last member, so the same splice works again on the result; channel is first.
      assert.equal(Object.keys(parsed).at(-1), 'ext');
      assert.ok(text.startsWith('{"channel":"/a",'), text);
      assert.equal(isPositionedOn('/a', text), true);
    });
  }
});

describe('adding values other than positions', () => {
  it('writes them as JSON.stringify would', () => {
    const message = { channel: '/a', data: 1 };
    const add = (value: unknown): unknown => (JSON.parse(addToExt(serialiseExtLast(message), message, 'k', value)) as { ext: { k: unknown } }).ext.k;
    assert.equal(add('marker'), 'marker');
    assert.deepEqual(add({ epoch: 'e', offset: 1, more: true }), { epoch: 'e', offset: 1, more: true });
    assert.deepEqual(add({ offset: 2, epoch: 'e"q' }), { epoch: 'e"q', offset: 2 });
    assert.deepEqual(add({ epoch: 'e', offset: 1.5 }), { epoch: 'e', offset: 1.5 });
  });

  it('writes any key and epoch as JSON.stringify would, those that need escaping too', () => {
    const message = { channel: '/a', data: 1 };
    for (const text of ['k3x', '', ' ~', 'e"q', 'back\\slash', 'tab\t', 'é', '\u{1F600}', '\ud800', 'x'.repeat(80)]) {
      const added = JSON.parse(addToExt(serialiseExtLast(message), message, text, { epoch: text, offset: 4 })) as { ext: Record<string, unknown> };
      assert.deepEqual(added.ext, { [text]: { epoch: text, offset: 4 } }, JSON.stringify(text));
    }
  });
});

describe('telling a positioned message of a channel from its bytes', () => {
  const positioned = (message: object, position: unknown = { epoch: 'e1', offset: 7 }): string => addToExt(serialiseExtLast(message), message, 'position', position);

  it('recognises the channel at the start and the position at the end', () => {
    const text = positioned({ data: { nested: '"channel":"/b"' }, channel: '/a/b' });
    assert.equal(isPositionedOn('/a/b', text), true);
    assert.equal(isPositionedOn('/a', text), false, 'another channel, even a prefix of it');
    assert.equal(isPositionedOn('/b', text), false, 'the channel named inside the data does not count');
  });

  it('says no for messages without a position, whatever their data holds', () => {
    assert.equal(isPositionedOn('/a', serialiseExtLast({ channel: '/a', data: 1 }).text), false);
    assert.equal(isPositionedOn('/a', serialiseExtLast({ channel: '/a', data: '"position":{"epoch":"e","offset":1}}}' }).text), false);
    assert.equal(isPositionedOn('/a', serialiseExtLast({ channel: '/a', ext: { position: 'forged' } }).text), false);
  });

  it('works for long payloads and the longest epochs', () => {
    assert.equal(isPositionedOn('/a', positioned({ channel: '/a', data: 'x'.repeat(100_000) }, { epoch: 'e'.repeat(64), offset: 2 ** 52 })), true);
  });
});
