/**
 * Nothing missed, on the wire: positions on delivered messages, recovery on subscribe (replay,
 * then live, with no gap and no duplicate at the seam), refusals when recovery cannot be honoured,
 * publish deduplication, slow consumers, and the history read API.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import type { Position } from '@perihelion/protocol';
import { PerihelionError } from '../src/index.js';
import { WsPeer, at, errorOf, handshake, post, sessionRecord, startServer, waitFor, type Msg, type TestServer } from './helpers.js';

const positionOf = (message: Msg): Position => (message.ext as { position: Position }).position;

/** A WebSocket session: handshaken, connected (connects re-sent as they are answered), ready to subscribe. */
async function wsSession(url: string): Promise<{ peer: WsPeer; clientId: string; data(channel: string): Msg[] }> {
  const peer = await WsPeer.open(url);
  const reply = await peer.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
  const clientId = reply.clientId as string;
  await peer.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
  peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
  return { peer, clientId, data: (channel) => peer.received.filter((m) => m.channel === channel && m.data !== undefined) };
}

describe('positions and recovery', () => {
  let t: TestServer;
  const peers: WsPeer[] = [];
  const open = async (): Promise<Awaited<ReturnType<typeof wsSession>>> => {
    const session = await wsSession(t.wsUrl);
    peers.push(session.peer);
    return session;
  };

  before(async () => {
    t = await startServer({ historySize: 5, history: [{ channel: '/ticks/**', size: 0 }, { channel: '/short/*', ttl: 1000 }, { channel: '/busy', size: 100_000 }] });
  });
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });
  after(() => t.close());

  it('stamps each broadcast message with {epoch, offset}, offsets counting up by one per channel', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/pos/**' });
    await t.server.publish('/pos/x', 1);
    await t.server.publish('/pos/y', 2);
    await t.server.publish('/pos/x', 3);
    await waitFor(() => a.data('/pos/x').length === 2 && a.data('/pos/y').length === 1, 3000, 'three messages');
    const [x1, x2] = a.data('/pos/x').map(positionOf);
    assert.equal(x1!.offset, 1);
    assert.equal(x2!.offset, 2);
    assert.equal(x1!.epoch, x2!.epoch);
    assert.equal(positionOf(a.data('/pos/y')[0]!).offset, 1, 'each channel counts on its own');
    assert.notEqual(positionOf(a.data('/pos/y')[0]!).epoch, x1!.epoch);
  });

  it('gives no position on channels without history, and never passes on a position a client forged', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: ['/ticks/eur', '/forged'] });
    await t.server.publish('/ticks/eur', 1.1);
    const publisher = await open();
    const reply = await publisher.peer.request({ channel: '/forged', clientId: publisher.clientId, data: 'x', ext: { position: { epoch: 'mine', offset: 99 }, trace: 't1' } });
    assert.equal(reply.successful, true);
    await waitFor(() => a.data('/ticks/eur').length === 1 && a.data('/forged').length === 1, 3000, 'both messages');
    assert.equal(a.data('/ticks/eur')[0]!.ext, undefined);
    const forged = a.data('/forged')[0]!;
    assert.equal((forged.ext as Msg).trace, 't1', 'the rest of ext travels');
    assert.equal(positionOf(forged).offset, 1, 'the server numbers it, not the client');
    assert.notEqual(positionOf(forged).epoch, 'mine');
    // Nor one a backend gave (server.publish, and so /api/publish).
    await t.server.publish('/forged', 'y', { ext: { position: { epoch: 'mine', offset: 99 } } });
    await waitFor(() => a.data('/forged').length === 2, 3000, 'the backend message');
    // The bytes every subscriber got, as kept in history: a parsed frame would hide a second key.
    const raw = (await t.server.engine.history('/forged'))!.payloads.find((text) => text.includes('"data":"y"'))!;
    assert.equal(raw.match(/"position"/g)?.length, 1, 'one position in the bytes');
    assert.equal(positionOf(a.data('/forged')[1]!).offset, 2);
  });

  it('answers a subscribe with the current position of each exact channel, none for patterns', async () => {
    await t.server.publish('/seam/a', 'before');
    const a = await open();
    const reply = await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: ['/seam/a', '/seam/new', '/seam/*'] });
    const positions = (reply.ext as { positions: Record<string, Position> }).positions;
    assert.deepEqual(Object.keys(positions).sort(), ['/seam/a', '/seam/new']);
    assert.equal(positions['/seam/a']!.offset, 1);
    assert.equal(positions['/seam/new']!.offset, 0, 'a channel nobody published to yet starts at 0');
    await t.server.publish('/seam/new', 'first');
    await waitFor(() => a.data('/seam/new').length === 1, 3000, 'the first message');
    assert.deepEqual(positionOf(a.data('/seam/new')[0]!), { epoch: positions['/seam/new']!.epoch, offset: 1 }, 'the same epoch the subscribe reply gave');
  });

  it('replays what a client missed since its last position, in order, then goes on live', async () => {
    const first = await open();
    await first.peer.request({ channel: '/meta/subscribe', clientId: first.clientId, subscription: '/rec/a' });
    await t.server.publish('/rec/a', 'seen');
    await waitFor(() => first.data('/rec/a').length === 1, 3000, 'the first message');
    const last = positionOf(first.data('/rec/a')[0]!);
    await first.peer.close();
    for (const text of ['missed 1', 'missed 2', 'missed 3']) await t.server.publish('/rec/a', text);

    const again = await open();
    const reply = await again.peer.request({ channel: '/meta/subscribe', clientId: again.clientId, subscription: '/rec/a', ext: { recover: { '/rec/a': last } } });
    assert.equal(reply.successful, true);
    assert.deepEqual((reply.ext as Msg).recovered, { '/rec/a': true });
    assert.deepEqual((reply.ext as { positions: Record<string, Position> }).positions['/rec/a'], { epoch: last.epoch, offset: 4 }, 'replay ends here');
    await t.server.publish('/rec/a', 'live');
    await waitFor(() => again.data('/rec/a').length === 4, 3000, 'replay and live');
    assert.deepEqual(again.data('/rec/a').map((m) => m.data), ['missed 1', 'missed 2', 'missed 3', 'live']);
    assert.deepEqual(again.data('/rec/a').map((m) => positionOf(m).offset), [2, 3, 4, 5]);
    assert.ok(t.server.stats().replayed >= 3);
  });

  it('recovers on a subscribe resent on the same session, queuing nothing twice and nothing out of order', async () => {
    const clientId = await handshake(t.url);
    await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }, { channel: '/meta/subscribe', clientId, subscription: ['/again/a', '/again/*'] }]);
    await t.server.publish('/again/a', 1);
    const first = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    const seen = positionOf(first.body.find((m) => m.channel === '/again/a')!);
    for (const n of [2, 3]) await t.server.publish('/again/a', n); // queued for the session, once per subscription match
    // The client lost the reply to its subscribe and sends it again, asking for what followed 1.
    const reply = await post(t.url, [{ channel: '/meta/subscribe', clientId, subscription: '/again/a', ext: { recover: { '/again/a': seen } } }]);
    assert.equal(at(reply.body, 0).successful, true);
    assert.deepEqual((at(reply.body, 0).ext as Msg).recovered, { '/again/a': true });
    await t.server.publish('/again/a', 4);
    const next = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
    const data = next.body.filter((m) => m.channel === '/again/a');
    assert.deepEqual(data.map((m) => m.data), [2, 3, 4], 'the replay replaced what was queued: once each, in order');
    assert.deepEqual(data.map((m) => positionOf(m).offset), [2, 3, 4]);
  });

  it('recovers every channel under a wildcard subscription that the client names', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/room/*' });
    await t.server.publish('/room/1', 'r1');
    await t.server.publish('/room/2', 'r2');
    await waitFor(() => a.peer.received.filter((m) => m.data !== undefined).length === 2, 3000, 'two messages');
    const seen = Object.fromEntries(a.peer.received.filter((m) => m.data !== undefined).map((m) => [m.channel as string, positionOf(m)]));
    await a.peer.close();
    await t.server.publish('/room/2', 'r2 missed');
    await t.server.publish('/room/1', 'r1 missed');
    const b = await open();
    const reply = await b.peer.request({ channel: '/meta/subscribe', clientId: b.clientId, subscription: '/room/*', ext: { recover: { ...seen, '/elsewhere/x': seen['/room/1'] } } });
    assert.deepEqual((reply.ext as Msg).recovered, { '/room/1': true, '/room/2': true }, 'entries outside the subscription are ignored');
    await waitFor(() => b.peer.received.filter((m) => m.data !== undefined).length === 2, 3000, 'the replay');
    assert.deepEqual(b.peer.received.filter((m) => m.data !== undefined).map((m) => m.data).sort(), ['r1 missed', 'r2 missed']);
  });

  it('says recovery failed, and replays nothing, when the position is too old, from another epoch, or expired', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: ['/old/a', '/short/a'] });
    await t.server.publish('/old/a', 0);
    await t.server.publish('/short/a', 0);
    await waitFor(() => a.data('/old/a').length === 1 && a.data('/short/a').length === 1, 3000, 'first messages');
    const old = positionOf(a.data('/old/a')[0]!);
    const short = positionOf(a.data('/short/a')[0]!);
    await a.peer.close();
    for (let i = 1; i <= 6; i++) await t.server.publish('/old/a', i); // history keeps 5: message 2 is gone
    await t.server.publish('/short/a', 'expires');
    await new Promise((resolve) => setTimeout(resolve, 1100)); // /short/* keeps messages 1 s

    const b = await open();
    const reply = await b.peer.request({
      channel: '/meta/subscribe',
      clientId: b.clientId,
      subscription: ['/old/a', '/short/a', '/old/b'],
      ext: { recover: { '/old/a': old, '/short/a': short, '/old/b': { epoch: 'not-this-one', offset: 0 } } },
    });
    assert.equal(reply.successful, true, 'the subscription itself succeeds');
    assert.deepEqual((reply.ext as Msg).recovered, { '/old/a': false, '/short/a': false, '/old/b': false });
    await t.server.publish('/old/a', 'live');
    await waitFor(() => b.data('/old/a').length === 1, 3000, 'the live message');
    assert.deepEqual(b.data('/old/a').map((m) => m.data), ['live'], 'nothing replayed, live goes on');
    assert.deepEqual(b.data('/short/a'), []);
  });

  it('refuses a malformed ext.recover with a 400 that says what a position is', async () => {
    const a = await open();
    const cases: Array<[unknown, RegExp]> = [
      ['k3x:1', /must map channels to positions/],
      [[{ epoch: 'a', offset: 1 }], /must map channels to positions/],
      [{ '/a/*': { epoch: 'a', offset: 1 } }, /positions belong to channels, not patterns/],
      [{ 'no-slash': { epoch: 'a', offset: 1 } }, /start with/],
      [{ '/a': { epoch: 'a', offset: -1 } }, /a position is \{"epoch": string, "offset": integer >= 0\}/],
      [{ '/a': { epoch: 7, offset: 1 } }, /a position is/],
      [{ '/a': null }, /a position is/],
    ];
    for (const [recover, detail] of cases) {
      const reply = await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/a', ext: { recover } });
      assert.equal(reply.successful, false, JSON.stringify(recover));
      const error = errorOf(reply);
      assert.equal(error.code, 400);
      assert.deepEqual(error.args, ['ext.recover']);
      assert.match(error.message, detail);
    }
    assert.equal(t.server.getSession(a.clientId)!.subscriptions.size, 0, 'nothing was subscribed');
  });

  it('joins replay and live with no gap and no duplicate while messages keep being published', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/busy' });
    let next = 0;
    let publishing = true;
    const publisher = (async () => {
      while (publishing) {
        await t.server.publish('/busy', next++);
        if (next % 3 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    await waitFor(() => a.data('/busy').length >= 3, 3000, 'some messages');
    const last = positionOf(a.data('/busy').at(-1)!);
    const b = await open();
    const reply = await b.peer.request({ channel: '/meta/subscribe', clientId: b.clientId, subscription: '/busy', ext: { recover: { '/busy': last } } });
    assert.deepEqual((reply.ext as Msg).recovered, { '/busy': true });
    await new Promise((resolve) => setTimeout(resolve, 50));
    publishing = false;
    await publisher;
    await waitFor(() => b.data('/busy').at(-1)?.data === next - 1, 3000, 'the last message');
    const offsets = b.data('/busy').map((m) => positionOf(m).offset);
    const expected = Array.from({ length: next - last.offset }, (_, i) => last.offset + 1 + i);
    assert.deepEqual(offsets, expected, 'every offset after the recovered position, once, in order');
  });

  it('a resync of a wildcard names, for each channel recovered that the client did not name, the position its replay follows', async () => {
    const a = await open();
    await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/unnamed/*' });
    await t.server.publish('/unnamed/a', 'a1');
    await t.server.publish('/unnamed/b', 'b1');
    await t.server.publish('/unnamed/b', 'b2');
    await waitFor(() => a.data('/unnamed/b').length === 2, 3000, 'the messages');
    const [b1, b2] = a.data('/unnamed/b');
    // The client received /unnamed/a only: /unnamed/b went down a line that died.
    const reply = await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/unnamed/*', ext: { recover: { '/unnamed/a': positionOf(a.data('/unnamed/a')[0]!) } } });
    const ext = reply.ext as { recovered: Record<string, boolean>; positions: Record<string, Position> };
    assert.deepEqual(ext.recovered, { '/unnamed/a': true, '/unnamed/b': true });
    assert.deepEqual(ext.positions, { '/unnamed/b': { epoch: positionOf(b1!).epoch, offset: positionOf(b1!).offset - 1 } }, 'where the replay of the channel it never named starts; the one it named it knows');
    await waitFor(() => a.data('/unnamed/b').length === 4, 3000, 'the replay');
    assert.deepEqual(a.data('/unnamed/b').slice(2), [b1, b2]);
  });
});

describe('maxReplay: the most messages one subscribe replays', () => {
  let t: TestServer;
  const peers: WsPeer[] = [];
  before(async () => {
    t = await startServer({ historySize: 100, maxReplay: 3 });
  });
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });
  after(() => t.close());

  /** Subscribes a session to `channels`, then leaves with the position of each, as a client cut off would. */
  async function lastPositions(channels: string[]): Promise<Record<string, Position>> {
    const a = await wsSession(t.wsUrl);
    peers.push(a.peer);
    const reply = await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: channels });
    await a.peer.close();
    return (reply.ext as { positions: Record<string, Position> }).positions;
  }

  /** A new session subscribing to the channels of `since`, recovering from there: its reply and what it is sent. */
  async function recoverFrom(since: Record<string, Position>): Promise<{ recovered: unknown; data: unknown[] }> {
    const b = await wsSession(t.wsUrl);
    peers.push(b.peer);
    const reply = await b.peer.request({ channel: '/meta/subscribe', clientId: b.clientId, subscription: Object.keys(since), ext: { recover: since } });
    assert.equal(reply.successful, true, 'the subscription itself succeeds');
    await t.server.publish(Object.keys(since)[0]!, 'live');
    await waitFor(() => b.peer.received.some((m) => m.data === 'live'), 3000, 'the live message');
    return { recovered: (reply.ext as Msg).recovered, data: b.peer.received.filter((m) => m.data !== undefined).map((m) => m.data) };
  }

  it('replays exactly maxReplay messages, and refuses one more with recovered: false and nothing replayed', async () => {
    const within = await lastPositions(['/cap/three']);
    for (const n of [1, 2, 3]) await t.server.publish('/cap/three', n);
    assert.deepEqual(await recoverFrom(within), { recovered: { '/cap/three': true }, data: [1, 2, 3, 'live'] });

    const past = await lastPositions(['/cap/four']);
    for (const n of [1, 2, 3, 4]) await t.server.publish('/cap/four', n);
    assert.deepEqual(await recoverFrom(past), { recovered: { '/cap/four': false }, data: ['live'] });
  });

  it('counts the budget across the channels of one subscribe: the channel that would pass it recovers nothing', async () => {
    const since = await lastPositions(['/cap/a', '/cap/b']);
    for (const n of [1, 2]) await t.server.publish('/cap/a', `a${n}`);
    for (const n of [1, 2]) await t.server.publish('/cap/b', `b${n}`);
    assert.deepEqual(await recoverFrom(since), { recovered: { '/cap/a': true, '/cap/b': false }, data: ['a1', 'a2', 'live'] });
  });
});

describe('recovery across cuts (10 000 messages)', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ historySize: 10_000, maxQueue: 10_000 });
  });
  after(() => t.close());

  it('a client whose line is cut at random moments ends with every message exactly once, in order', { timeout: 60_000 }, async () => {
    const TOTAL = 10_000;
    const received: number[] = [];
    let position: Position | null = null;
    let ws: WebSocket | null = null;
    let cuts = 0;

    /** A new line and a new session; subscribes with the last position seen, if any. */
    const join = async (): Promise<void> => {
      const socket = new WebSocket(t.wsUrl);
      ws = socket;
      await new Promise((resolve, reject) => {
        socket.once('open', resolve);
        socket.once('error', reject);
      });
      let clientId = '';
      const subscribed = new Promise<void>((resolve, reject) => {
        socket.on('message', (frame) => {
          if (socket !== ws) return; // a line already cut: whatever it still delivers is not ours
          for (const message of JSON.parse(String(frame)) as Msg[]) {
            if (message.channel === '/meta/handshake') {
              clientId = message.clientId as string;
              socket.send(JSON.stringify([
                { channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 } },
                { channel: '/meta/subscribe', clientId, subscription: '/stream', ...(position ? { ext: { recover: { '/stream': position } } } : {}) },
              ]));
            } else if (message.channel === '/meta/subscribe') {
              if (message.successful !== true || (position && (message.ext as { recovered: Record<string, boolean> }).recovered['/stream'] !== true)) {
                reject(new Error(`recovery refused: ${JSON.stringify(message)}`));
              } else resolve();
            } else if (message.channel === '/meta/connect') {
              if (message.successful === true) socket.send(JSON.stringify([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]));
            } else if (message.channel === '/stream') {
              received.push(message.data as number);
              position = positionOf(message);
            }
          }
        });
      });
      socket.on('error', () => {});
      socket.send(JSON.stringify([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] }]));
      await subscribed;
    };

    await join();
    let published = 0;
    const publisher = (async () => {
      while (published < TOTAL) {
        for (let i = 0; i < 20 && published < TOTAL; i++) await t.server.publish('/stream', published++);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    while (published < TOTAL) {
      await new Promise((resolve) => setTimeout(resolve, 10 + Math.random() * 60));
      (ws as WebSocket | null)?.terminate();
      cuts++;
      await join();
    }
    await publisher;
    await waitFor(() => received.length >= TOTAL, 20_000, () => `all ${TOTAL} messages (have ${received.length})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    (ws as WebSocket | null)?.terminate();
    assert.ok(cuts >= 10, `the line was cut ${cuts} times`);
    assert.equal(received.length, TOTAL, 'no duplicate');
    assert.ok(received.every((value, i) => value === i), 'every message, in order');
  });
});

describe('duplicate publishes', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer();
  });
  after(() => t.close());

  it('publishes a message resent with the same id on the same session once, and acknowledges both', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/dup' });
    const clientId = await handshake(t.url);
    const publish = { channel: '/dup', clientId, data: 'once', id: 'p-1' };
    const first = await post(t.url, [publish]);
    const again = await post(t.url, [publish]);
    assert.equal(at(first.body, 0).successful, true);
    assert.equal(at(again.body, 0).successful, true, 'the resend is acknowledged');
    assert.equal(at(again.body, 0).id, 'p-1');
    await post(t.url, [{ ...publish, id: 'p-2', data: 'twice' }]);
    await waitFor(() => subscriber.data('/dup').length === 2, 3000, 'two messages');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(subscriber.data('/dup').map((m) => m.data), ['once', 'twice']);
    assert.equal(t.server.stats().duplicatePublishes, 1);
    await subscriber.peer.close();
  });

  it('lets a refused publish be resent with the same id, and keeps sessions apart', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/dup2' });
    const clientId = await handshake(t.url);
    const big = await post(t.url, [{ channel: '/dup2', clientId, id: 'x', data: 'y'.repeat(600 * 1024) }]);
    assert.equal(errorOf(at(big.body, 0)).code, 413);
    await post(t.url, [{ channel: '/dup2', clientId, id: 'x', data: 'fits' }]);
    const other = await handshake(t.url);
    await post(t.url, [{ channel: '/dup2', clientId: other, id: 'x', data: 'other session' }]);
    await waitFor(() => subscriber.data('/dup2').length === 2, 3000, 'both');
    assert.deepEqual(subscriber.data('/dup2').map((m) => m.data), ['fits', 'other session']);
    await subscriber.peer.close();
  });
});

describe('a resend that comes while the first try is still on its way', () => {
  let t: TestServer;
  /** The authorize hook's calls for /slow, each settled by the test: true allows, an Error fails the publish. */
  const waiting: Array<(outcome: true | Error) => void> = [];
  before(async () => {
    t = await startServer({
      open: false,
      channels: [{ channel: '/slow', subscribe: 'anyone', publish: 'anyone' }],
      authorize: ({ channel, operation }) => {
        if (channel !== '/slow' || operation !== 'publish') return undefined;
        return new Promise((resolve, reject) => waiting.push((outcome) => (outcome === true ? resolve(true) : reject(outcome))));
      },
    });
    t.server.on('error', () => {}); // the hook's failure is the point
  });
  after(() => t.close());

  it('is answered after it: published by the resend when the first try failed, once when it succeeded', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/slow' });
    const clientId = await handshake(t.url);
    const send = (id: string, data: string): Promise<Msg> => post(t.url, [{ channel: '/slow', clientId, id, data }]).then((response) => at(response.body as Msg[], 0));
    // The first try waits (Redis away, a slow hook); its line dies and the client sends it again.
    const first = send('1', 'failed first');
    await waitFor(() => waiting.length === 1, 3000, 'the first try at the hook');
    const resend = send('1', 'failed first');
    await new Promise((resolve) => setTimeout(resolve, 100));
    waiting.shift()!(new Error('the first try fails'));
    assert.equal((await first).successful, false, 'the first try failed (its answer went down the dead line)');
    await waitFor(() => waiting.length === 1, 3000, 'the resend, tried itself');
    waiting.shift()!(true);
    assert.equal((await resend).successful, true);
    // And when the first try succeeds, the resend that came meanwhile is its duplicate.
    const second = send('2', 'succeeded first');
    await waitFor(() => waiting.length === 1, 3000, 'the second publish at the hook');
    const again = send('2', 'succeeded first');
    await new Promise((resolve) => setTimeout(resolve, 100));
    waiting.shift()!(true);
    assert.equal((await second).successful, true);
    assert.equal((await again).successful, true);
    assert.equal(waiting.length, 0, 'the duplicate was not tried again');
    await waitFor(() => subscriber.data('/slow').length === 2, 3000, 'two messages');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(subscriber.data('/slow').map((m) => m.data), ['failed first', 'succeeded first']);
    await subscriber.peer.close();
  });
});

describe('duplicate publishes across a client\'s sessions', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer();
  });
  after(() => t.close());

  /** A long-polling session of the client `instance` (the handshake's ext.instance); its clientId. */
  const sessionOf = async (instance: string | undefined): Promise<string> => {
    const ext: Record<string, unknown> = {};
    if (instance !== undefined) ext.instance = instance;
    const [reply] = (await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], ext }])).body as Msg[];
    return reply!.clientId as string;
  };

  it('a publish resent on the next session of the same client (its first swept meanwhile) is acknowledged and not published again', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/resumed' });
    const first = await sessionOf('client-instance-1');
    assert.equal(at((await post(t.url, [{ channel: '/resumed', clientId: first, id: '7', data: 'once' }])).body, 0).successful, true);
    // The reply was lost and the session swept while the line was down: the client comes back
    // with a new session and resends what was never acknowledged, with the same id.
    sessionRecord(t.server, first)!.disconnect();
    const second = await sessionOf('client-instance-1');
    const resent = at((await post(t.url, [{ channel: '/resumed', clientId: second, id: '7', data: 'once' }])).body, 0);
    assert.equal(resent.successful, true, 'acknowledged');
    assert.equal(at((await post(t.url, [{ channel: '/resumed', clientId: second, id: '8', data: 'next' }])).body, 0).successful, true);
    // Another client, and a session that names no client, keep their own ids.
    const stranger = await sessionOf('client-instance-2');
    await post(t.url, [{ channel: '/resumed', clientId: stranger, id: '7', data: 'stranger' }]);
    const anonymous = await sessionOf(undefined);
    await post(t.url, [{ channel: '/resumed', clientId: anonymous, id: '7', data: 'unnamed' }]);
    await waitFor(() => subscriber.data('/resumed').length === 4, 3000, 'four messages');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(subscriber.data('/resumed').map((m) => m.data), ['once', 'next', 'stranger', 'unnamed']);
    await subscriber.peer.close();
  });
});

describe('idempotency keys of client publishes (ext.idempotencyKey)', () => {
  let t: TestServer;
  before(async () => {
    // The user is the one a request names in x-user (none: anonymous).
    t = await startServer({ authenticate: ({ request }) => (typeof request.headers['x-user'] === 'string' ? { id: request.headers['x-user'], roles: [], claims: {} } : null) });
  });
  after(() => t.close());

  /** A new long-polling session of `user` (a client started again: no instance, ids from 1). */
  const sessionOf = async (user?: string): Promise<{ clientId: string; publish: (message: Msg) => Promise<Msg> }> => {
    const headers: Record<string, string> = user === undefined ? {} : { 'x-user': user };
    const [reply] = (await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }], headers)).body as Msg[];
    const clientId = reply!.clientId as string;
    return { clientId, publish: async (message) => at((await post(t.url, [{ ...message, clientId }], headers)).body as Msg[], 0) };
  };

  it('publishes a key once from the same user, whatever session, id or restart; says so; subscribers never see the key', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/orders' });
    const before = t.server.stats().duplicatePublishes;
    const first = await sessionOf('ann');
    const done = await first.publish({ channel: '/orders', id: '1', data: 'order 17 paid', ext: { idempotencyKey: 'order-17/paid', note: 'kept' } });
    assert.equal(done.successful, true);
    assert.equal((done.ext as Msg | undefined)?.repeated, undefined, 'a first publish is no repeat');
    // The process was restarted: a new session, no instance, its ids from 1 again, the same key.
    const restarted = await sessionOf('ann');
    const repeat = await restarted.publish({ channel: '/orders', id: '1', data: 'order 17 paid', ext: { idempotencyKey: 'order-17/paid' } });
    assert.equal(repeat.successful, true, 'acknowledged');
    assert.equal((repeat.ext as Msg).repeated, true, 'and said to be a repeat');
    // The same key from another user, an anonymous client and the API are their own.
    assert.equal((await (await sessionOf('bob')).publish({ channel: '/orders', data: 'bob', ext: { idempotencyKey: 'order-17/paid' } })).successful, true);
    assert.equal((await (await sessionOf()).publish({ channel: '/orders', data: 'anonymous', ext: { idempotencyKey: 'order-17/paid' } })).successful, true);
    assert.equal(await t.server.publish('/orders', 'api', { idempotencyKey: 'order-17/paid' }), true);
    assert.equal((await restarted.publish({ channel: '/orders', id: '2', data: 'order 18 paid', ext: { idempotencyKey: 'order-18/paid' } })).successful, true);
    await waitFor(() => subscriber.data('/orders').length === 5, 3000, 'five messages');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const got = subscriber.data('/orders');
    assert.deepEqual(got.map((m) => m.data), ['order 17 paid', 'bob', 'anonymous', 'api', 'order 18 paid']);
    assert.deepEqual({ ...(got[0]!.ext as Msg), position: undefined }, { note: 'kept', position: undefined }, 'the key is the server\'s, not the subscribers\'');
    assert.equal(t.server.stats().duplicatePublishes - before, 1);
    await subscriber.peer.close();
  });

  it('refuses a key that is not 1 to 255 visible ASCII characters, or on a /service channel, and keeps serving', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/keys/bad' });
    const session = await sessionOf('ann');
    for (const key of [17, '', ' spaced', 'x'.repeat(256), 'caf\u00e9', null, { a: 1 }]) {
      const refused = await session.publish({ channel: '/keys/bad', data: 'never', ext: { idempotencyKey: key } });
      assert.equal(refused.successful, false, `key ${JSON.stringify(key)}`);
      assert.equal(errorOf(refused).code, 400);
      assert.deepEqual(errorOf(refused).args, ['ext.idempotencyKey']);
    }
    t.server.subscribe('/service/keys', () => 'answered');
    const service = await session.publish({ channel: '/service/keys', data: 'x', ext: { idempotencyKey: 'k' } });
    assert.equal(service.successful, false);
    assert.match(service.error as string, /broadcast channels/);
    assert.equal((await session.publish({ channel: '/keys/bad', data: 'fine', ext: { idempotencyKey: 'x'.repeat(255) } })).successful, true);
    await waitFor(() => subscriber.data('/keys/bad').length === 1, 3000, 'the good one');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(subscriber.data('/keys/bad').map((m) => m.data), ['fine']);
    await subscriber.peer.close();
  });

  it('does not keep the key of a publish that was refused: made again, it is published', async () => {
    const subscriber = await wsSession(t.wsUrl);
    await subscriber.peer.request({ channel: '/meta/subscribe', clientId: subscriber.clientId, subscription: '/keys/refused' });
    const session = await sessionOf('ann');
    const big = await session.publish({ channel: '/keys/refused', data: 'y'.repeat(600 * 1024), ext: { idempotencyKey: 'refused-1' } });
    assert.equal(errorOf(big).code, 413);
    const again = await session.publish({ channel: '/keys/refused', data: 'fits', ext: { idempotencyKey: 'refused-1' } });
    assert.equal(again.successful, true);
    assert.equal((again.ext as Msg | undefined)?.repeated, undefined);
    await waitFor(() => subscriber.data('/keys/refused').length === 1, 3000, 'the second try');
    await subscriber.peer.close();
  });
});

describe('slow consumers', () => {
  it('drop-oldest: a consumer that stops reading holds at most maxQueue messages, and the drops are counted', { timeout: 30_000 }, async () => {
    const t = await startServer({ maxQueue: 100, maxBufferedBytes: 64 * 1024 });
    try {
      const slow = await wsSession(t.wsUrl);
      await slow.peer.request({ channel: '/meta/subscribe', clientId: slow.clientId, subscription: '/firehose' });
      // The client stops reading: the kernel buffers fill, then ws's buffer, then the queue.
      (slow.peer.ws as unknown as { _socket: { pause(): void } })._socket.pause();
      const session = sessionRecord(t.server, slow.clientId)!;
      const payload = 'z'.repeat(4096);
      let maxQueued = 0;
      for (let i = 0; i < 5000; i++) {
        await t.server.publish('/firehose', { i, payload });
        if (i % 50 === 0) await new Promise((resolve) => setImmediate(resolve));
        maxQueued = Math.max(maxQueued, session.queue.length);
      }
      assert.ok(maxQueued <= 100, `at most maxQueue waiting (saw ${maxQueued})`);
      assert.ok(t.server.stats().queueDrops > 0, 'drops counted');
      assert.equal(session.ended, false, 'the session lives on');
    } finally {
      await t.close();
    }
  });

  it('disconnect: the session is ended with advice to handshake again, and counted', async () => {
    const t = await startServer({ maxQueue: 3, queueOverflow: 'disconnect' });
    try {
      const clientId = await handshake(t.url);
      await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }, { channel: '/meta/subscribe', clientId, subscription: '/flood' }]);
      const ended: string[] = [];
      t.server.on('disconnect', (_session, reason) => ended.push(reason));
      for (let i = 0; i < 4; i++) await t.server.publish('/flood', i);
      assert.deepEqual(ended, ['slow-consumer']);
      assert.equal(t.server.stats().slowConsumers, 1);
      const { body } = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }]);
      assert.equal(at(body, 0).successful, false);
      assert.equal((at(body, 0).advice as Msg).reconnect, 'handshake');
    } finally {
      await t.close();
    }
  });
});

describe('server.history()', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer({ historySize: 3, history: [{ channel: '/nohistory/**', size: 0 }] });
  });
  after(() => t.close());

  it('reads the latest messages, or those after a position, oldest first', async () => {
    for (let i = 1; i <= 4; i++) await t.server.publish('/h/a', { i });
    const page = (await t.server.history('/h/a'))!;
    assert.deepEqual(page.messages.map((m) => m.data), [{ i: 2 }, { i: 3 }, { i: 4 }]);
    assert.equal(page.position!.offset, 4);
    assert.equal(page.complete, true);
    assert.deepEqual(page.messages.map((m) => positionOf(m as Msg).offset), [2, 3, 4]);
    const after2 = (await t.server.history('/h/a', { since: { epoch: page.position!.epoch, offset: 2 }, limit: 1 }))!;
    assert.deepEqual(after2.messages.map((m) => m.data), [{ i: 3 }]);
    const gone = (await t.server.history('/h/a', { since: { epoch: page.position!.epoch, offset: 0 } }))!;
    assert.deepEqual([gone.messages, gone.complete], [[], false]);
    const fresh = (await t.server.history('/h/never'))!;
    assert.deepEqual(fresh, { position: null, messages: [], complete: true });
    assert.equal(await t.server.history('/nohistory/x'), null);
  });

  it('refuses bad arguments with coded errors', async () => {
    await assert.rejects(t.server.history('/h/*'), (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_CHANNEL');
    await assert.rejects(t.server.history('nope'), (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_CHANNEL');
    await assert.rejects(t.server.history('/h/a', { limit: -1 }), (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_ARGUMENT');
  });
});

describe('subscribe churn and maxHistoryChannels', () => {
  let t: TestServer;
  const peers: WsPeer[] = [];
  before(async () => {
    t = await startServer({ maxHistoryChannels: 10, presenceGrace: 0 });
  });
  afterEach(async () => {
    await Promise.all(peers.splice(0).map((peer) => peer.close()));
  });
  after(() => t.close());

  it('a client subscribing to ever new names (each a position and a presence join and leave) pushes out no channel\'s history', async () => {
    for (const n of [1, 2]) await t.server.publish('/real/a', n);
    const a = await wsSession(t.wsUrl);
    peers.push(a.peer);
    const since = (await a.peer.request({ channel: '/meta/subscribe', clientId: a.clientId, subscription: '/real/a' })).ext as { positions: Record<string, Position> };
    await a.peer.close();
    await t.server.publish('/real/a', 3);

    // Someone hears presence (an in-process listener): every join and leave is published and kept.
    const stopListening = t.server.subscribe('/presence/**', () => {});
    const churn = await wsSession(t.wsUrl);
    peers.push(churn.peer);
    for (let round = 0; round < 5; round++) {
      const names = Array.from({ length: 10 }, (_, i) => `/churn/${round}/${i}`);
      assert.equal((await churn.peer.request({ channel: '/meta/subscribe', clientId: churn.clientId, subscription: names })).successful, true);
      assert.equal((await churn.peer.request({ channel: '/meta/unsubscribe', clientId: churn.clientId, subscription: names })).successful, true);
    }
    // The presence events were published and the latest are kept (the rest gave way to one another).
    const presence = await t.server.history('/presence/churn/4/9');
    assert.deepEqual(presence?.messages.at(-1)?.data, { action: 'leave', clientId: churn.clientId, user: null });
    stopListening();

    const b = await wsSession(t.wsUrl);
    peers.push(b.peer);
    const reply = await b.peer.request({ channel: '/meta/subscribe', clientId: b.clientId, subscription: '/real/a', ext: { recover: since.positions } });
    assert.deepEqual((reply.ext as Msg).recovered, { '/real/a': true });
    await waitFor(() => b.data('/real/a').length === 1, 3000, 'the replayed message');
    assert.deepEqual(b.data('/real/a').map((m) => m.data), [3]);
  });
});
