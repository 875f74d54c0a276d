import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ERRORS, bayeuxError, checkMessage, decodeBatch, encodeBatch, jsonDepth, parseError, subscriptionList } from '../src/index.js';

describe('Bayeux error strings', () => {
  it('follow code:args:message and parse back', () => {
    assert.equal(bayeuxError('clientUnknown', ['abc123']), '402:abc123:Unknown client');
    assert.equal(bayeuxError('channelForbidden', ['/meta/foo']), '403:/meta/foo:Forbidden channel');
    assert.equal(bayeuxError('clientIdMissing'), '401::No client ID');
    assert.deepEqual(parseError('402:abc123:Unknown client'), { code: 402, args: ['abc123'], message: 'Unknown client' });
    assert.deepEqual(parseError('403::Authentication required: see docs'), { code: 403, args: [], message: 'Authentication required: see docs' });
    assert.equal(parseError('nonsense'), null);
  });

  it('keep the three-part grammar when args hold separators', () => {
    const parsed = parseError(bayeuxError('channelInvalid', ['/a:b,c', '/d'], 'bad'));
    assert.deepEqual(parsed, { code: 405, args: ['/a_b_c', '/d'], message: 'Invalid channel: bad' });
  });

  it('use a three-digit code for every entry in the table', () => {
    for (const [name, { code }] of Object.entries(ERRORS)) assert.ok(code >= 300 && code < 600, name);
  });
});

describe('JSON codec', () => {
  it('decodes an array or a single message, always as a list', () => {
    assert.deepEqual(decodeBatch('[{"channel":"/a"}]'), { ok: true, messages: [{ channel: '/a' }] });
    assert.deepEqual(decodeBatch('{"channel":"/a"}'), { ok: true, messages: [{ channel: '/a' }] });
    assert.deepEqual(decodeBatch('[]'), { ok: true, messages: [] });
  });

  it('refuses malformed JSON, scalars, deep nesting and big batches with a status, an error name and a reason', () => {
    assert.deepEqual(Object.keys(decodeBatch('[{')), ['ok', 'status', 'error', 'reason']);
    assert.equal((decodeBatch('[{') as { status: number }).status, 400);
    assert.equal((decodeBatch('[{') as { error: string }).error, 'badRequest');
    assert.match((decodeBatch('42') as { reason: string }).reason, /JSON array/);
    assert.match((decodeBatch('null') as { reason: string }).reason, /JSON array/);
    const deep = `[${'{"a":'.repeat(40)}1${'}'.repeat(40)}]`;
    assert.match((decodeBatch(deep, { maxDepth: 32 }) as { reason: string }).reason, /deeper than 32/);
    assert.equal(decodeBatch(deep, { maxDepth: 64 }).ok, true);
    // A message nested exactly maxDepth deep passes, one level more does not, in a list or bare.
    const nested = (levels: number): string => `${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}`;
    for (const wrap of [(m: string) => `[${m}]`, (m: string) => m, (m: string) => ` \n[${m}]`]) {
      assert.equal(decodeBatch(wrap(nested(32)), { maxDepth: 32 }).ok, true, wrap('…'));
      assert.equal(decodeBatch(wrap(nested(33)), { maxDepth: 32 }).ok, false, wrap('…'));
    }
    const many = JSON.stringify(Array.from({ length: 5 }, () => ({ channel: '/a' })));
    assert.equal((decodeBatch(many, { maxBatch: 4 }) as { status: number }).status, 413);
    assert.equal((decodeBatch(many, { maxBatch: 4 }) as { error: string }).error, 'batchTooLarge');
  });

  it('counts depth outside strings only', () => {
    assert.equal(jsonDepth('["[[[[", {"a": "{{{"}]'), 2);
    assert.equal(jsonDepth('["\\"[[["]'), 1);
    assert.equal(jsonDepth('[[[]]]'), 3);
  });

  it('joins serialised messages into one array', () => {
    assert.equal(encodeBatch(['{"a":1}']), '[{"a":1}]');
    assert.equal(encodeBatch(['{"a":1}', '{"b":2}']), '[{"a":1},{"b":2}]');
    assert.equal(encodeBatch([]), '[]');
  });
});

describe('message shape checks', () => {
  it('accepts well-formed messages', () => {
    assert.equal(checkMessage({ channel: '/a', id: '1', clientId: 'x', ext: {}, advice: {} }).ok, true);
    assert.equal(checkMessage({ channel: '/a', id: 7 }).ok, true);
  });

  it('refuses wrong field types, echoing the channel and a usable id', () => {
    const noChannel = checkMessage({ id: '9' });
    assert.deepEqual(noChannel.ok ? null : [noChannel.id, noChannel.channel, /^400:channel:/.test(noChannel.error)], ['9', undefined, true]);
    for (const bad of [{ channel: '/a', clientId: 5 }, { channel: '/a', ext: 'x' }, { channel: '/a', advice: [] }, { channel: '/a', id: {} }]) {
      const checked = checkMessage(bad);
      assert.equal(checked.ok, false, JSON.stringify(bad));
      assert.equal(checked.ok ? undefined : checked.channel, '/a');
    }
    assert.equal(checkMessage(null).ok, false);
    assert.equal(checkMessage([]).ok, false);
    assert.equal(checkMessage('x').ok, false);
  });

  it('reads subscription fields as lists', () => {
    assert.deepEqual(subscriptionList('/a'), ['/a']);
    assert.deepEqual(subscriptionList(['/a', '/b']), ['/a', '/b']);
    assert.equal(subscriptionList([]), null);
    assert.equal(subscriptionList([1]), null);
    assert.equal(subscriptionList(undefined), null);
  });
});

describe('framing', () => {
  it('validates JSONP callback names as both clients make them, and nothing else', async () => {
    const { isValidCallback } = await import('../src/index.js');
    for (const name of ['_cometd_jsonp_1', '__jsonp3__', 'jsonpcallback', 'a.b.c', '$cb']) assert.ok(isValidCallback(name), name);
    for (const name of ['', 'alert(1)', 'a b', '1abc', 'a..b', 'x'.repeat(65), '<script>', 'a;b', 42]) assert.ok(!isValidCallback(name), String(name));
  });

  it('wraps JSONP with a leading comment and escapes U+2028/U+2029', async () => {
    const { jsonpWrap } = await import('../src/index.js');
    assert.equal(jsonpWrap('cb', '["a\u2028b\u2029"]'), '/**/cb(["a\\u2028b\\u2029"]);');
  });

  it('frames SSE events, comments and retry, and ndjson lines', async () => {
    const { sseEvent, sseComment, sseRetry, ndjsonLine } = await import('../src/index.js');
    assert.equal(sseEvent('[1]', { id: 7 }), 'id: 7\ndata: [1]\n\n');
    assert.equal(sseEvent('{}', { event: 'connected' }), 'event: connected\ndata: {}\n\n');
    assert.equal(sseComment(), ':\n\n');
    assert.equal(sseRetry(5000.7), 'retry: 5000\n\n');
    assert.equal(ndjsonLine('[]'), '[]\n');
  });
});
