/**
 * A shared todo list kept in PostgreSQL: a Perihelion state channel (`/todos`) whose versions
 * are saved in a table, so that a restarted server carries on at the same version and value.
 *   node examples/state-postgres/app.mjs     (PORT, default 3000; DATABASE_URL, default
 *                                             postgres://postgres@127.0.0.1:5432/test;
 *                                             TODOS_TABLE, default perihelion_state)
 *
 * - `load` reads `{value, version}` from the table (created if missing), `save` upserts each new
 *   version in a transaction and refuses to go backwards (a version not above the saved one);
 *   a save that fails means the change is not made.
 * - `validate` takes a client's proposal (sent to /service/state) when its result is a valid todo
 *   list: at most 500 items, each `{id: string, text: string of at most 200 characters, done: boolean}`.
 * - `POST /todos {"text": "…"}` adds an item on the server with `state.update`.
 * - `GET /` is a page that follows the list live (the browser client from /bayeux/client.js):
 *   it takes a snapshot, applies the patches that follow (a new snapshot when it falls behind),
 *   adds items through the route and ticks them off through proposals.
 */
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { createServer } from '@perihelion/server';

export const CHANNEL = '/todos';
export const MAX_ITEMS = 500;
export const MAX_TEXT = 200;
export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';
const DEFAULT_TABLE = 'perihelion_state';
const TABLE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const MAX_BODY = 16 * 1024;

/** Why `value` is not a valid todo list, or null when it is. */
export function todoListProblem(value) {
  if (!Array.isArray(value)) return 'the todo list must be an array';
  if (value.length > MAX_ITEMS) return `at most ${MAX_ITEMS} items`;
  const ids = new Set();
  for (const [index, item] of value.entries()) {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return `item ${index} must be an object`;
    const keys = Object.keys(item).sort().join(',');
    if (keys !== 'done,id,text') return `item ${index} must have exactly id, text and done`;
    if (typeof item.id !== 'string' || item.id === '' || item.id.length > 64) return `item ${index}: id must be a string of 1 to 64 characters`;
    if (ids.has(item.id)) return `item ${index}: id ${JSON.stringify(item.id)} is used twice`;
    ids.add(item.id);
    if (typeof item.text !== 'string' || item.text.length > MAX_TEXT) return `item ${index}: text must be a string of at most ${MAX_TEXT} characters`;
    if (typeof item.done !== 'boolean') return `item ${index}: done must be true or false`;
  }
  return null;
}

/**
 * The table of saved states, one row per channel. `load` and `save` are the state channel's
 * hooks; versions only go up.
 */
export function stateTable(pool, table) {
  if (!TABLE_NAME.test(table)) throw new Error(`table must be a lower-case SQL name (${TABLE_NAME}), got ${JSON.stringify(table)}`);
  const name = `"${table}"`;
  return {
    async create() {
      await pool.query(`CREATE TABLE IF NOT EXISTS ${name} (
        channel text PRIMARY KEY,
        version bigint NOT NULL CHECK (version >= 0),
        value jsonb NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
      )`);
    },
    async load(channel) {
      const { rows } = await pool.query(`SELECT version, value FROM ${name} WHERE channel = $1`, [channel]);
      // bigint arrives as a string; jsonb as the parsed value.
      return rows.length === 0 ? undefined : { value: rows[0].value, version: Number(rows[0].version) };
    },
    async save(channel, { value, version }) {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const { rows } = await client.query(`SELECT version FROM ${name} WHERE channel = $1 FOR UPDATE`, [channel]);
        const saved = rows.length === 0 ? null : Number(rows[0].version);
        if (saved !== null && version <= saved) throw new Error(`refusing to save version ${version} of ${channel}: ${table} holds version ${saved} already`);
        // The WHERE holds even against a row inserted meanwhile (no row to lock above): versions only go up.
        const result = await client.query(
          `INSERT INTO ${name} (channel, version, value) VALUES ($1, $2, $3::jsonb)
           ON CONFLICT (channel) DO UPDATE SET version = EXCLUDED.version, value = EXCLUDED.value, saved_at = now()
           WHERE ${name}.version < EXCLUDED.version`,
          // JSON text: pg would send a JS array as a PostgreSQL array.
          [channel, version, JSON.stringify(value)],
        );
        if (result.rowCount !== 1) throw new Error(`refusing to save version ${version} of ${channel}: ${table} holds a newer version`);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        throw error;
      } finally {
        client.release();
      }
    },
  };
}

export async function start({
  port = Number(process.env.PORT ?? 3000),
  host,
  databaseUrl = process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL,
  table = process.env.TODOS_TABLE ?? DEFAULT_TABLE,
} = {}) {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 4, connectionTimeoutMillis: 5000 });
  // An idle client losing its connection (the database restarted) must not crash the process.
  pool.on('error', (error) => console.error(`PostgreSQL: ${error.message}`));
  let bayeux;
  try {
    const store = stateTable(pool, table);
    await store.create();

    // Clients may subscribe to /todos (the default) and send proposals to /service/state; the
    // server alone publishes on /todos.
    bayeux = createServer({ path: '/bayeux' });
    bayeux.on('error', (error) => console.error(`Perihelion: ${error?.message ?? error}`));
    const todos = await bayeux.state(CHANNEL, [], {
      load: () => store.load(CHANNEL),
      save: (change) => store.save(CHANNEL, change),
      validate: ({ next }) => todoListProblem(next) ?? true,
    });

    const server = http.createServer((req, res) => {
      route(req, res, todos).catch((error) => {
        console.error(error);
        if (!res.headersSent) json(res, 500, { error: 'internal error' });
      });
    });
    bayeux.attach(server);
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });

    const { port: bound } = server.address();
    return {
      url: `http://localhost:${bound}`,
      port: bound,
      state: todos,
      server,
      bayeux,
      async close() {
        await bayeux.close(); // the state channel stops taking changes; pending ones are saved first
        await new Promise((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        await pool.end();
      },
    };
  } catch (error) {
    await bayeux?.close().catch(() => {});
    await pool.end().catch(() => {});
    throw error;
  }
}

async function route(req, res, todos) {
  const { pathname } = new URL(req.url, 'http://localhost');
  if (req.method === 'GET' && pathname === '/') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PAGE);
    return;
  }
  if (req.method === 'GET' && pathname === '/todos') return json(res, 200, { version: todos.version, value: todos.get() });
  if (req.method === 'POST' && pathname === '/todos') {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch (error) {
      return json(res, 400, { error: `send {"text": "..."} as JSON (${error.message})` });
    }
    const text = typeof body?.text === 'string' ? body.text.trim() : null;
    if (!text || text.length > MAX_TEXT) return json(res, 400, { error: `text: 1 to ${MAX_TEXT} characters` });
    const item = { id: randomUUID(), text, done: false };
    let full = false;
    try {
      await todos.update((list) => {
        if (list.length >= MAX_ITEMS) full = true;
        else list.push(item);
      });
    } catch (error) {
      // The save failed (the database away): the item was not added.
      return json(res, 503, { error: `not saved: ${error.message}` });
    }
    if (full) return json(res, 409, { error: `the list holds ${MAX_ITEMS} items already` });
    return json(res, 201, { item, version: todos.version });
  }
  json(res, 404, { error: 'not found' });
}

function json(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * GET /: the list, live. A snapshot from /service/state, then each patch of /todos applied in
 * version order by a small RFC 6902 applier (add, remove, replace, move, copy, test: what the
 * server's diff sends); anything unexpected (a gap, another epoch, an op that fails) takes a new
 * snapshot. Ticking an item off is a proposal; adding one is POST /todos.
 */
const PAGE = `<!doctype html>
<meta charset="utf-8"><title>Todos (Perihelion + PostgreSQL)</title>
<style>body{font:16px system-ui;max-width:40em;margin:2em auto} li.done span{text-decoration:line-through;color:#888} #status{color:#888}</style>
<h1>Todos</h1>
<p id="status">connecting…</p>
<form id="add"><input name="text" maxlength="${MAX_TEXT}" placeholder="Something to do" required autofocus> <button>Add</button></form>
<ul id="list"></ul>
<script src="/bayeux/client.js"></script>
<script>
  const client = new Perihelion.Client('/bayeux');
  let state = null; // {epoch, version, value}

  function render() {
    const list = document.getElementById('list');
    list.replaceChildren(...state.value.map((item, index) => {
      const li = document.createElement('li');
      li.className = item.done ? 'done' : '';
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = item.done;
      box.onchange = () => toggle(index, item);
      const text = document.createElement('span');
      text.textContent = ' ' + item.text;
      li.append(box, text);
      return li;
    }));
    document.getElementById('status').textContent = state.value.length + ' items, version ' + state.version;
  }

  async function snapshot() {
    const answer = await client.request('/service/state', { channel: '${CHANNEL}', op: 'snapshot' });
    state = { epoch: answer.epoch, version: answer.version, value: answer.value };
    render();
  }

  // A small RFC 6902 applier: the value is copied first, so a failing op changes nothing.
  function applyPatch(value, patch) {
    const root = { '': structuredClone(value) };
    const unescape = (token) => token.replace(/~1/g, '/').replace(/~0/g, '~');
    const locate = (pointer) => {
      const tokens = pointer === '' ? [] : pointer.slice(1).split('/').map(unescape);
      let parent = root, key = '';
      for (const token of tokens) {
        parent = parent[key];
        if (typeof parent !== 'object' || parent === null) throw new Error('no ' + pointer);
        key = Array.isArray(parent) ? (token === '-' ? parent.length : Number(token)) : token;
      }
      return { parent, key };
    };
    const get = ({ parent, key }) => { if (!(key in Object(parent))) throw new Error('nothing at ' + key); return parent[key]; };
    const put = ({ parent, key }, item) => (Array.isArray(parent) ? parent.splice(key, 0, item) : (parent[key] = item));
    const drop = ({ parent, key }) => (Array.isArray(parent) ? parent.splice(key, 1) : delete parent[key]);
    for (const op of patch) {
      const at = locate(op.path);
      if (op.op === 'add') put(at, structuredClone(op.value));
      else if (op.op === 'remove') { get(at); drop(at); }
      else if (op.op === 'replace') { get(at); at.parent[at.key] = structuredClone(op.value); }
      else if (op.op === 'move') { const from = locate(op.from); const item = get(from); drop(from); put(locate(op.path), item); }
      else if (op.op === 'copy') put(at, structuredClone(get(locate(op.from))));
      else if (op.op === 'test') { if (JSON.stringify(get(at)) !== JSON.stringify(op.value)) throw new Error('test failed'); }
      else throw new Error('unknown op ' + op.op);
    }
    return root[''];
  }

  client.subscribe('${CHANNEL}', (patch) => {
    if (!state) return; // the snapshot below covers it
    if (patch.epoch !== state.epoch || patch.version > state.version + 1) return void snapshot();
    if (patch.version <= state.version) return; // already in the snapshot
    try {
      state = { epoch: state.epoch, version: patch.version, value: applyPatch(state.value, patch.patch) };
      render();
    } catch {
      snapshot();
    }
  }).then(snapshot);

  // Ticking off: a proposal on the version this page shows; the server's validate decides, and
  // its patch comes back like any other.
  async function toggle(index, item) {
    try {
      await client.request('/service/state', {
        channel: '${CHANNEL}', op: 'propose', epoch: state.epoch, base: state.version,
        patch: [{ op: 'test', path: '/' + index + '/id', value: item.id }, { op: 'replace', path: '/' + index + '/done', value: !item.done }],
      });
    } catch (error) {
      document.getElementById('status').textContent = 'not changed: ' + error.message;
      await snapshot();
    }
  }

  document.getElementById('add').onsubmit = async (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    const response = await fetch('/todos', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text: input.value }) });
    if (response.ok) input.value = '';
    else document.getElementById('status').textContent = (await response.json()).error;
  };
</script>
`;

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { url, close } = await start();
  console.log(`Todos on ${url} (state channel ${CHANNEL}, Bayeux at ${url}/bayeux)`);
  const stop = () => close().then(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
