/**
 * The PostgreSQL state example against the real database (DATABASE_URL, default
 * postgres://postgres@127.0.0.1:5432/test), in a table of its own per run, dropped at the end:
 * items added through POST /todos are saved version by version; a restarted app resumes at the
 * same version and value, and its next patch is the version after; proposals are validated;
 * saves never go backwards. Without a reachable PostgreSQL the test fails, saying how to start it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';
import { diff } from '@perihelion/state';
import { CHANNEL, DEFAULT_DATABASE_URL, MAX_ITEMS, MAX_TEXT, start, stateTable, todoListProblem } from '../state-postgres/app.mjs';

const DATABASE_URL = process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL;
const TABLE = `perihelion_test_todos_${process.pid}_${randomBytes(4).toString('hex')}`;
const TIMEOUT = 5000;

function waitFor(predicate, what) {
  const deadline = Date.now() + TIMEOUT;
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (predicate()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(poll, 10);
    };
    poll();
  });
}

describe('state-postgres example', () => {
  let pool;
  /** Why PostgreSQL cannot be used: every test fails with it (a failure, not a skip). */
  let unreachable = null;
  const apps = [];
  const clients = [];

  async function launch() {
    const app = await start({ port: 0, databaseUrl: DATABASE_URL, table: TABLE });
    apps.push(app);
    return app;
  }

  function client(app) {
    const made = new Client(`${app.url}/bayeux`, { WebSocket, timeout: TIMEOUT, maxReconnectDelay: 1000 });
    clients.push(made);
    return made;
  }

  async function addTodo(app, text) {
    const response = await fetch(`${app.url}/todos`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text }) });
    return { status: response.status, body: await response.json() };
  }

  /** The row the table holds for /todos: {version, value}, or undefined. */
  async function saved() {
    const { rows } = await pool.query(`SELECT version, value FROM "${TABLE}" WHERE channel = $1`, [CHANNEL]);
    return rows.length === 0 ? undefined : { version: Number(rows[0].version), value: rows[0].value };
  }

  before(async () => {
    pool = new pg.Pool({ connectionString: DATABASE_URL, connectionTimeoutMillis: 3000, max: 2 });
    pool.on('error', () => {});
    try {
      await pool.query('SELECT 1');
    } catch (error) {
      await pool.end().catch(() => {});
      pool = undefined;
      unreachable = new Error(
        `PostgreSQL is not reachable at ${DATABASE_URL} (${error.message}). This test needs a real PostgreSQL: ` +
          'start it (e.g. `sudo service postgresql start`, `pg_ctlcluster 15 main start`, or ' +
          '`docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`), ' +
          'or set DATABASE_URL to a database where this user may create tables.',
      );
    }
  });

  after(async () => {
    await Promise.all(clients.splice(0).map((c) => c.disconnect().catch(() => {})));
    await Promise.all(apps.splice(0).map((app) => app.close().catch(() => {})));
    if (pool) {
      await pool.query(`DROP TABLE IF EXISTS "${TABLE}"`);
      const { rows } = await pool.query('SELECT to_regclass($1) AS found', [TABLE]);
      assert.equal(rows[0].found, null, 'the test table was dropped');
      await pool.end();
    }
  });

  test('saves every version in the table, and a restarted app resumes at the same version and value', async () => {
    if (unreachable) throw unreachable;
    const first = await launch();
    assert.equal(first.state.version, 0, 'a new table: the list starts empty at version 0');
    assert.deepEqual(first.state.get(), []);
    assert.equal(await saved(), undefined, 'nothing is saved before the first change');

    const milk = await addTodo(first, 'milk');
    assert.equal(milk.status, 201);
    assert.equal(milk.body.version, 1);
    assert.deepEqual({ text: milk.body.item.text, done: milk.body.item.done }, { text: 'milk', done: false });
    assert.equal((await addTodo(first, '  bread  ')).body.version, 2);
    // Refused by the route: nothing changes.
    for (const body of [{}, { text: '' }, { text: 'x'.repeat(MAX_TEXT + 1) }, { text: 42 }]) {
      const response = await fetch(`${first.url}/todos`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(response.status, 400, JSON.stringify(body));
    }
    assert.equal((await fetch(`${first.url}/todos`, { method: 'POST', body: 'not json' })).status, 400);
    assert.equal(first.state.version, 2);

    let row = await saved();
    assert.equal(row.version, 2, 'the table holds the latest version');
    assert.deepEqual(row.value, first.state.get(), 'and its value');
    assert.deepEqual(row.value.map((item) => item.text), ['milk', 'bread']);

    // A client's proposal, accepted by validate: tick milk off.
    const c1 = client(first);
    const snapshot = await c1.request('/service/state', { channel: CHANNEL, op: 'snapshot' });
    assert.deepEqual(snapshot, { channel: CHANNEL, epoch: first.state.epoch, version: 2, value: first.state.get() });
    const accepted = await c1.request('/service/state', {
      channel: CHANNEL,
      op: 'propose',
      epoch: snapshot.epoch,
      base: 2,
      patch: [{ op: 'replace', path: '/0/done', value: true }],
      id: 'tick-milk',
    });
    assert.deepEqual(accepted, { channel: CHANNEL, version: 3 });
    // Refused by validate: a text too long, an item without `done`, done not a boolean.
    const invalid = [
      [{ op: 'replace', path: '/1/text', value: 'x'.repeat(MAX_TEXT + 1) }],
      [{ op: 'add', path: '/-', value: { id: 'x', text: 'no done' } }],
      [{ op: 'replace', path: '/1/done', value: 'yes' }],
      [{ op: 'replace', path: '', value: { not: 'a list' } }],
    ];
    for (const patch of invalid) {
      await assert.rejects(c1.request('/service/state', { channel: CHANNEL, op: 'propose', epoch: snapshot.epoch, base: 3, patch }), (error) => {
        assert.equal(error.bayeuxCode, 403, `${JSON.stringify(patch)}: ${error.message}`);
        return true;
      });
    }
    // A client cannot publish on /todos itself.
    await assert.rejects(c1.publish(CHANNEL, { epoch: snapshot.epoch, version: 4, patch: [] }), (error) => error.bayeuxCode === 403);
    assert.equal(first.state.version, 3);
    row = await saved();
    assert.equal(row.version, 3);
    assert.deepEqual(row.value.map((item) => [item.text, item.done]), [['milk', true], ['bread', false]]);
    const kept = first.state.get();
    await c1.disconnect();
    await first.close();

    // Started again on the same table: the same version and value.
    const second = await launch();
    assert.equal(second.state.version, 3);
    assert.deepEqual(second.state.get(), kept);
    assert.notEqual(second.state.epoch, first.state.epoch, 'a new process, a new epoch: old replicas take a snapshot');

    // A subscriber gets the next change as version 4.
    const c2 = client(second);
    const patches = [];
    await c2.subscribe(CHANNEL, (data) => patches.push(data));
    const eggs = await addTodo(second, 'eggs');
    assert.equal(eggs.status, 201);
    assert.equal(eggs.body.version, 4);
    await waitFor(() => patches.length === 1, 'the patch of version 4');
    assert.deepEqual(patches[0], { epoch: second.state.epoch, version: 4, patch: [{ op: 'add', path: '/2', value: eggs.body.item }] });
    row = await saved();
    assert.equal(row.version, 4);
    assert.deepEqual(row.value, second.state.get());
  });

  test('save never goes backwards: an older version is refused, and a change whose save fails is not made', async () => {
    if (unreachable) throw unreachable;
    const app = apps.at(-1) ?? (await launch());
    const store = stateTable(pool, TABLE);
    const now = (await saved()).version;
    await assert.rejects(store.save(CHANNEL, { value: [], version: now }), /refusing to save version/);
    await assert.rejects(store.save(CHANNEL, { value: [], version: now - 1 }), /refusing to save version/);
    assert.equal((await saved()).version, now, 'the table kept its version');

    // Another writer moved the table ahead: this app's next save would go backwards, so it is refused.
    await pool.query(`UPDATE "${TABLE}" SET version = version + 100 WHERE channel = $1`, [CHANNEL]);
    const value = app.state.get();
    const refused = await addTodo(app, 'never saved');
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.match(refused.body.error, /refusing to save version/);
    assert.equal(app.state.version, now, 'the change was not made');
    assert.deepEqual(app.state.get(), value);
    assert.equal((await saved()).version, now + 100);
  });

  test('validate accepts exactly the valid todo lists', () => {
    const item = (n, more = {}) => ({ id: `id${n}`, text: `item ${n}`, done: false, ...more });
    assert.equal(todoListProblem([]), null);
    assert.equal(todoListProblem([item(1), item(2, { done: true, text: 'x'.repeat(MAX_TEXT) })]), null);
    assert.equal(todoListProblem(Array.from({ length: MAX_ITEMS }, (_, n) => item(n))), null);
    const bad = [
      {},
      null,
      Array.from({ length: MAX_ITEMS + 1 }, (_, n) => item(n)),
      [item(1), item(1)],
      [item(1, { text: 'x'.repeat(MAX_TEXT + 1) })],
      [item(1, { done: 'no' })],
      [item(1, { id: 7 })],
      [item(1, { id: '' })],
      [item(1, { extra: true })],
      [{ id: 'a', text: 'b' }],
      ['text'],
      [[item(1)]],
    ];
    for (const value of bad) assert.equal(typeof todoListProblem(value), 'string', JSON.stringify(value)?.slice(0, 80));
    assert.throws(() => stateTable(pool, 'Robert"; DROP TABLE students; --'), /table must be/);
  });

  test('GET / serves the page, which loads the browser client', async () => {
    if (unreachable) throw unreachable;
    const app = apps.at(-1) ?? (await launch());
    const response = await fetch(`${app.url}/`);
    assert.equal(response.status, 200);
    const html = await response.text();
    assert.match(html, /<script src="\/bayeux\/client\.js"><\/script>/);
    // The inline script parses.
    const inline = html.split('<script>')[1].split('</script>')[0];
    assert.doesNotThrow(() => new Function(inline));
    const script = await fetch(`${app.url}/bayeux/client.js`);
    assert.equal(script.status, 200);
    const listed = await (await fetch(`${app.url}/todos`)).json();
    assert.deepEqual(listed, { version: app.state.version, value: app.state.get() });

    // The page's small patch applier follows the server's patches (diffed as the server diffs: by id).
    const source = inline.slice(inline.indexOf('function applyPatch'), inline.indexOf('client.subscribe('));
    const applyPatch = new Function(`${source}; return applyPatch;`)();
    let seed = 7;
    const random = (n) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    let value = [];
    for (let step = 0; step < 300; step++) {
      const next = structuredClone(value);
      const action = random(6);
      if (action <= 1 || next.length === 0) next.splice(random(next.length + 1), 0, { id: `id${step}`, text: `item ${step}`, done: false });
      else if (action === 2) next.splice(random(next.length), 1);
      else if (action === 3) next[random(next.length)].done = !next[random(next.length)].done;
      else if (action === 4) next[random(next.length)].text += '!';
      else next.splice(random(next.length + 1), 0, ...next.splice(random(next.length), 1 + random(3))); // a move
      const patch = diff(value, next);
      const applied = applyPatch(value, patch);
      assert.deepEqual(applied, next, `step ${step}: ${JSON.stringify(patch)}`);
      value = next;
    }
    assert.throws(() => applyPatch([{ id: 'a' }], [{ op: 'replace', path: '/3/done', value: true }]));
    assert.throws(() => applyPatch([], [{ op: 'test', path: '', value: [1] }]));
  });
});
