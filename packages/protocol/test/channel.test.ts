import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { channelKind, channelProblem, isMetaChannel, isValidChannel, isValidPattern, matches, matchingPatterns } from '../src/index.js';

describe('channel names', () => {
  it('accepts the spec grammar and the CometD superset', () => {
    for (const name of ['/a', '/chat/room1', '/a-b_c!~()$@', '/x/{id}', '/a.b', '/with space', '/#+']) {
      assert.equal(channelProblem(name), null, name);
    }
  });

  it('refuses names that are not channels, saying why', () => {
    assert.match(channelProblem('')!, /empty/);
    assert.match(channelProblem('chat')!, /start with "\/"/);
    assert.match(channelProblem('/a//b')!, /empty segment/);
    assert.match(channelProblem('/a/')!, /empty segment/);
    assert.match(channelProblem('/a/*/b')!, /last segment/);
    assert.match(channelProblem('/a/b*')!, /segment "b\*"/);
    assert.match(channelProblem('/a/é')!, /segment "é"/);
    assert.match(channelProblem('/a/b:c')!, /segment/);
    assert.match(channelProblem(42)!, /string/);
    assert.match(channelProblem(`/${'x'.repeat(2000)}`)!, /longer than 1024/);
  });

  it('tells channels from patterns', () => {
    assert.ok(isValidPattern('/a/*'));
    assert.ok(isValidPattern('/a/**'));
    assert.ok(isValidPattern('/**'));
    assert.ok(!isValidChannel('/a/*'));
    assert.match(channelProblem('/a/**', { allowWildcard: false })!, /not allowed/);
  });

  it('knows the five meta channels exactly', () => {
    assert.ok(isMetaChannel('/meta/handshake'));
    assert.ok(isMetaChannel('/meta/disconnect'));
    assert.ok(!isMetaChannel('/meta/subscribe/x'), 'CVE-2020-11020: a suffix is not the meta channel');
    assert.ok(!isMetaChannel('/meta/foo'));
    assert.equal(channelKind('/meta/foo'), 'meta');
    assert.equal(channelKind('/service/echo'), 'service');
    assert.equal(channelKind('/services/x'), 'broadcast');
    assert.equal(channelKind('/metadata'), 'broadcast');
  });
});

describe('wildcard matching', () => {
  it('expands a channel to the patterns that match it (depth + 1 keys)', () => {
    assert.deepEqual(matchingPatterns('/a/b/c').sort(), ['/**', '/a/**', '/a/b/*', '/a/b/**', '/a/b/c'].sort());
    assert.deepEqual(matchingPatterns('/a').sort(), ['/*', '/**', '/a'].sort());
  });

  it('follows the spec examples for * and **', () => {
    assert.ok(matches('/foo/*', '/foo/bar'));
    assert.ok(!matches('/foo/*', '/foo'));
    assert.ok(!matches('/foo/*', '/foobar'));
    assert.ok(!matches('/foo/*', '/foo/bar/boo'));
    assert.ok(matches('/foo/**', '/foo/bar'));
    assert.ok(matches('/foo/**', '/foo/bar/boo'));
    assert.ok(!matches('/foo/**', '/foo'));
    assert.ok(!matches('/foo/**', '/foobar/x'));
    assert.ok(matches('/**', '/anything/at/all'));
  });

  it('agrees with the expansion for every pattern and channel in a sample', () => {
    const names = ['/a', '/b', '/a/b', '/a/c', '/a/b/c', '/a/b/d', '/b/a/b'];
    const patterns = [...names, '/*', '/**', '/a/*', '/a/**', '/a/b/*', '/a/b/**', '/b/**'];
    for (const channel of names) {
      const expanded = new Set(matchingPatterns(channel));
      for (const pattern of patterns) assert.equal(expanded.has(pattern), matches(pattern, channel), `${pattern} vs ${channel}`);
    }
  });
});
