/**
 * The demo gallery's server side, without a browser: what clients may publish, how every input
 * is checked (and the reasons given), the services' answers, and a prompt shutdown while the
 * demos' timers run.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@perihelion/client';
import { checkBoard } from '../src/demos/board.js';
import { checkSlides } from '../src/demos/slides.js';
import { step } from '../src/demos/ticker.js';
import { serve, type Running } from '../src/index.js';

/** The server's refusal as the client reports it: `<channel>: <message>`. */
async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as Error).message;
  }
  assert.fail('expected a refusal');
}

describe('demo gallery services', () => {
  let running: Running;
  let client: Client;

  before(async () => {
    running = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true }, () => {});
    client = new Client(`${running.url}/bayeux`, { transports: ['long-polling'] });
    await client.connect();
  });

  after(async () => {
    await client?.disconnect().catch(() => {});
    await running?.stop();
  });

  it('serves only the gallery’s own files', async () => {
    for (const path of ['/', '/chat', '/ticker', '/slides', '/job', '/board', '/gallery.css', '/common.js', '/chat.js', '/favicon.svg', '/favicon.ico']) {
      const response = await fetch(`${running.url}${path}`);
      assert.equal(response.status, 200, path);
      await response.arrayBuffer();
    }
    for (const path of ['/chat.html', '/index.html', '/public/chat.js', '/../package.json', '/%2e%2e/package.json', '/constructor', '/__proto__']) {
      assert.equal((await fetch(`${running.url}${path}`)).status, 404, path);
    }
    assert.equal((await fetch(`${running.url}/chat`, { method: 'POST' })).status, 404);
  });

  it('chat: a message to a room is stamped with the time and the sender; bad ones are refused with the reason', async () => {
    const got: Array<Record<string, unknown>> = [];
    const sub = await client.subscribe('/chat/comet', (data) => void got.push(data as Record<string, unknown>));
    await client.publish('/chat/comet', { name: ' ann ', text: 'hi there' });
    await waitFor(() => got.length === 1);
    assert.equal(got[0]!.name, 'ann');
    assert.equal(got[0]!.text, 'hi there');
    assert.equal(got[0]!.from, client.clientId);
    assert.equal(typeof got[0]!.at, 'number');

    assert.match(await refusal(client.publish('/chat/nowhere', { name: 'ann', text: 'x' })), /unknown room; the rooms are lobby, comet, random/);
    assert.match(await refusal(client.publish('/chat/comet', { name: 'ann', text: 'x'.repeat(501) })), /text must be at most 500 characters \(got 501\)/);
    assert.match(await refusal(client.publish('/chat/comet', { name: '', text: 'x' })), /name must not be empty/);
    assert.match(await refusal(client.publish('/chat/comet', { name: 'ann', text: 42 })), /text must be a string/);
    assert.match(await refusal(client.publish('/chat/comet', { name: 'ann', text: 'x', html: '<b>' })), /unexpected field "html"/);
    assert.match(await refusal(client.publish('/chat/comet', 'just a string')), /data must be an object/);
    assert.match(await refusal(client.publish('/chat/comet/typing', { name: 'ann', text: 'x' })), /unexpected field "text"/);
    assert.match(await refusal(client.publish('/chat/comet/other', { name: 'ann' })), /403|unknown room|Forbidden/);
    await client.publish('/chat/comet/typing', { name: 'ann' });
    await sub.unsubscribe();
  });

  it('chat: names, history and presence', async () => {
    assert.deepEqual(await client.request('/service/chat/hello', { name: 'zoe' }), { clientId: client.clientId, name: 'zoe' });
    assert.match(await refusal(client.request('/service/chat/hello', { name: 'z'.repeat(41) })), /name must be at most 40 characters/);
    const renamed: unknown[] = [];
    const sub = await client.subscribe('/demo/chat/names', (data) => void renamed.push(data));
    await client.request('/service/chat/hello', { name: 'zoé' });
    await waitFor(() => renamed.length === 1);
    assert.deepEqual(renamed[0], { clientId: client.clientId, name: 'zoé' });
    await sub.unsubscribe();

    const lobby = await client.subscribe('/chat/lobby', () => {});
    assert.deepEqual((await client.presence('/chat/lobby')).map((m) => m.clientId), [client.clientId]);
    assert.deepEqual(await client.request('/service/chat/names', { clientIds: [client.clientId, 'nobody'] }), { names: { [client.clientId!]: 'zoé', nobody: null } });
    assert.match(await refusal(client.request('/service/chat/names', { clientIds: 'all' })), /clientIds/);
    for (let i = 1; i <= 35; i++) await client.publish('/chat/lobby', { name: 'zoé', text: `message ${i}` });
    const history = (await client.request('/service/chat/history', { room: 'lobby' })) as { messages: Array<{ data: { text: string }; offset: number }> };
    assert.equal(history.messages.length, 30);
    assert.equal(history.messages[0]!.data.text, 'message 6');
    assert.equal(history.messages.at(-1)!.data.text, 'message 35');
    assert.ok(history.messages.every((m, i, all) => i === 0 || m.offset === all[i - 1]!.offset + 1));
    assert.match(await refusal(client.request('/service/chat/history', { room: '../etc' })), /data must be \{ room \}/);
    await lobby.unsubscribe();
  });

  it('only the server publishes prices, job progress and state patches', async () => {
    for (const channel of ['/demo/ticker/PERI', '/demo/job', '/demo/chat/names', '/demo/board', '/demo/slides']) {
      assert.match(await refusal(client.publish(channel, { price: 1 })), /Forbidden|403/, channel);
    }
  });

  it('ticker: recent prices for every symbol, from the channels’ history; a random walk that stays positive', async () => {
    await new Promise((resolve) => setTimeout(resolve, 600));
    const recent = (await client.request('/service/ticker/recent', {})) as { symbols: Array<{ symbol: string; price: number; points: unknown[] }> };
    assert.deepEqual(recent.symbols.map((s) => s.symbol), ['PERI', 'BAYX', 'CMTD', 'ORBT', 'HALE', 'PUSH']);
    assert.ok(recent.symbols.some((s) => s.points.length > 0));
    let price = 1;
    for (let i = 0; i < 10_000; i++) price = step(price, () => 0);
    assert.ok(price >= 0.01 && price < 1, String(price));
    assert.ok(Math.abs(step(100) - 100) <= 0.61);
  });

  it('job: checks the duration, runs one job at a time, and publishes its progress', async () => {
    assert.match(await refusal(client.request('/service/job/start', { seconds: 1 })), /seconds must be an integer from 3 to 60/);
    assert.match(await refusal(client.request('/service/job/start', { seconds: '10' })), /seconds must be an integer/);
    assert.match(await refusal(client.request('/service/job/start', { seconds: 5, priority: 1 })), /unexpected field "priority"/);
    const events: Array<{ type: string; percent?: number }> = [];
    const sub = await client.subscribe('/demo/job', (data) => void events.push(data as { type: string }));
    const started = (await client.request('/service/job/start', { seconds: 3 })) as { id: number; state: string };
    assert.equal(started.state, 'running');
    assert.match(await refusal(client.request('/service/job/start', { seconds: 3 })), new RegExp(`job ${started.id} is already running`));
    await waitFor(() => events.some((e) => e.type === 'done'), 6000);
    assert.deepEqual(events.map((e) => e.type), ['started', ...Array<string>(49).fill('progress'), 'done']);
    const status = (await client.request('/service/job/status', {})) as { job: { id: number; state: string; percent: number } };
    assert.deepEqual([status.job.id, status.job.state, status.job.percent], [started.id, 'done', 100]);
    await sub.unsubscribe();
  });

  it('board and slides: proposals are checked on the server', async () => {
    const snapshot = (await client.request('/service/state', { channel: '/demo/board', op: 'snapshot' })) as { epoch: string; version: number; value: unknown[] };
    const propose = (patch: unknown[], id: string): Promise<unknown> =>
      client.request('/service/state', { channel: '/demo/board', op: 'propose', epoch: snapshot.epoch, base: snapshot.version, patch, id });
    assert.match(await refusal(propose([{ op: 'add', path: '/-', value: { id: 'x', text: 'y'.repeat(201), done: false } }], 'a')), /at most 200 characters/);
    assert.match(await refusal(propose([{ op: 'add', path: '/-', value: { id: 'x', text: 'ok', done: 'yes' } }], 'b')), /done must be true or false/);
    assert.match(await refusal(propose([{ op: 'add', path: '/-', value: { id: 'welcome', text: 'ok', done: false } }], 'c')), /used twice/);
    assert.match(await refusal(propose([{ op: 'replace', path: '', value: {} }], 'd')), /must be a list/);
    await propose([{ op: 'add', path: '/-', value: { id: 'fine', text: 'fine', done: false } }], 'e');

    assert.equal(checkBoard(Array.from({ length: 201 }, (_, i) => ({ id: `i${i}`, text: 't', done: false }))), 'the board holds at most 200 items');
    assert.equal(checkBoard(Array.from({ length: 200 }, (_, i) => ({ id: `i${i}`, text: 't', done: false }))), true);
    assert.match(String(checkBoard([{ id: 'a b', text: 't', done: false }])), /id must be/);
    assert.match(String(checkBoard([{ id: 'a', text: ' t', done: false }])), /must not start or end with spaces/);
    assert.equal(checkSlides({ slide: 3 }), true);
    assert.match(String(checkSlides({ slide: 7 })), /from 0 to 6/);
    assert.match(String(checkSlides({ slide: 1, by: 'me' })), /unexpected field/);

    const slides = (await client.request('/service/state', { channel: '/demo/slides', op: 'snapshot' })) as { epoch: string; version: number };
    assert.match(await refusal(client.request('/service/state', { channel: '/demo/slides', op: 'propose', epoch: slides.epoch, base: slides.version, patch: [{ op: 'replace', path: '/slide', value: 99 }], id: 's1' })), /slide must be an integer from 0 to 6/);
  });

  it('the server closes promptly while the demos’ timers run', async () => {
    const other = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true }, () => {});
    const c = new Client(`${other.url}/bayeux`, { transports: ['long-polling'] });
    await c.request('/service/job/start', { seconds: 60 });
    const started = Date.now();
    await c.disconnect();
    await other.stop();
    assert.ok(Date.now() - started < 3000, `closed in ${Date.now() - started} ms`);
  });
});

describe('demo gallery on a cluster (serve --redis)', () => {
  const REDIS = process.env.PERIHELION_TEST_REDIS ?? 'redis://127.0.0.1:6379';
  const nodes: Running[] = [];
  const clients: Client[] = [];
  const node = async (prefix: string, errors: unknown[] = []): Promise<Running> => {
    const running = await serve({ server: { pingInterval: 0 }, port: 0, host: '127.0.0.1', demo: true, redis: REDIS, redisPrefix: prefix }, () => {});
    running.server.on('error', (error) => errors.push(error));
    nodes.push(running);
    return running;
  };
  const connect = async (running: Running): Promise<Client> => {
    const c = new Client(`${running.url}/bayeux`, { transports: ['long-polling'] });
    clients.push(c);
    await c.connect();
    return c;
  };

  after(async () => {
    await Promise.all(clients.map((c) => c.disconnect().catch(() => {})));
    await Promise.all(nodes.map((running) => running.stop().catch(() => {})));
  });

  it("one node holds the board, the slides and the prices; the other's clients edit the same board, and it takes the demo over when that node stops", { timeout: 30_000 }, async () => {
    const prefix = `demo-cluster-${process.pid}-${Date.now()}:`;
    const errors: unknown[] = [];
    const first = await node(prefix, errors);
    assert.equal(await first.demo!.ready, true, 'the first node holds the demo');
    const second = await node(prefix, errors);
    assert.equal(await second.demo!.ready, false, 'the second finds it held');
    const [onFirst, onSecond] = [await connect(first), await connect(second)];
    const snapshot = (await onSecond.request('/service/state', { channel: '/demo/board', op: 'snapshot' })) as { epoch: string; version: number; value: Array<{ id: string }> };
    await onSecond.request('/service/state', { channel: '/demo/board', op: 'propose', epoch: snapshot.epoch, base: snapshot.version, patch: [{ op: 'add', path: '/-', value: { id: 'second', text: 'from the second node', done: false } }], id: 'p1' });
    const seen = (await onFirst.request('/service/state', { channel: '/demo/board', op: 'snapshot' })) as { epoch: string; value: Array<{ id: string }> };
    assert.equal(seen.epoch, snapshot.epoch, 'one board');
    assert.ok(seen.value.some((item) => item.id === 'second'), 'the proposal made through the second node is on the board');
    const slides = (await onSecond.request('/service/state', { channel: '/demo/slides', op: 'snapshot' })) as { epoch: string; version: number };
    await onSecond.request('/service/state', { channel: '/demo/slides', op: 'propose', epoch: slides.epoch, base: slides.version, patch: [{ op: 'replace', path: '/slide', value: 2 }], id: 's1' });
    assert.deepEqual(((await onFirst.request('/service/state', { channel: '/demo/slides', op: 'snapshot' })) as { value: unknown }).value, { slide: 2 }, 'one deck of slides');
    const recent = (await onSecond.request('/service/ticker/recent', {})) as { symbols: Array<{ symbol: string; points: unknown[] }> };
    assert.equal(recent.symbols.length, 6, 'the prices are answered on every node');
    assert.deepEqual(errors, [], 'no node saw another serve its state channels');

    // One job at a time in the whole cluster: the channel's history is where the nodes agree.
    const started = (await onFirst.request('/service/job/start', { seconds: 3 })) as { id: number };
    await waitFor(async () => ((await onSecond.request('/service/job/status', {})) as { job: { id: number } | null }).job?.id === started.id, 3000);
    assert.match(await refusal(onSecond.request('/service/job/start', { seconds: 3 })), new RegExp(`job ${started.id} is already running`));
    await waitFor(async () => ((await onSecond.request('/service/job/status', {})) as { job: { state: string } }).job.state === 'done', 6000);
    const next = (await onSecond.request('/service/job/start', { seconds: 3 })) as { id: number };
    assert.equal(next.id, started.id + 1, 'the next id, whichever node runs it');

    await first.stop();
    nodes.splice(nodes.indexOf(first), 1);
    const until = Date.now() + 15_000;
    for (;;) {
      const board = (await onSecond.request('/service/state', { channel: '/demo/board', op: 'snapshot' }).catch(() => null)) as { epoch: string } | null;
      if (board !== null && board.epoch !== snapshot.epoch) break;
      assert.ok(Date.now() < until, 'the second node did not take the board over');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });
});

async function waitFor(condition: () => boolean | Promise<boolean>, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > until) assert.fail('timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
