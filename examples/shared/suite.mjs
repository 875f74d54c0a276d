/**
 * The tests every example passes: the app and Perihelion share one port, the app's login is what
 * Perihelion authenticates, the app's routes push to one user's sessions and to everyone, and the
 * app's own pages still answer. Each file in ../test calls `testExample` with its app's `start`;
 * this file lives outside ../test so that `node --test examples/test` does not run it alone.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { Client, ClientError } from '@perihelion/client';
import { WebSocket } from 'ws';

const TIMEOUT = 5000;

/** A WebSocket that sends a Cookie header on its upgrade, as a browser sends the page's cookies. */
function webSocketWithCookie(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: cookie } });
    }
  };
}

/** Resolves with the next value pushed to `list` (or at once if it holds one), else fails after TIMEOUT. */
function next(inbox) {
  if (inbox.items.length > 0) return Promise.resolve(inbox.items.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nothing arrived')), TIMEOUT);
    inbox.waiting.push((item) => {
      clearTimeout(timer);
      resolve(item);
    });
  });
}

function inbox() {
  const box = { items: [], waiting: [] };
  box.push = (item) => {
    const waiter = box.waiting.shift();
    if (waiter) waiter(item);
    else box.items.push(item);
  };
  return box;
}

export function testExample(framework, start) {
  describe(`${framework} example`, () => {
    let app;
    let base;
    const clients = [];

    /** POST /login?user=… through the app; resolves to the `sid=…` cookie it set. */
    async function login(user) {
      const response = await fetch(`${base}/login?user=${encodeURIComponent(user)}`, { method: 'POST' });
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), { user });
      const setCookie = response.headers.getSetCookie().find((line) => line.startsWith('sid='));
      assert.ok(setCookie, 'the app sets its session cookie');
      assert.match(setCookie, /HttpOnly/i);
      return setCookie.split(';')[0];
    }

    function client(options) {
      const made = new Client(`${base}/bayeux`, { WebSocket, timeout: TIMEOUT, maxReconnectDelay: 1000, ...options });
      clients.push(made);
      return made;
    }

    /** A connected client subscribed to /notifications and /news, with what arrived on each. */
    async function subscribed(options) {
      const made = client(options);
      const notifications = inbox();
      const news = inbox();
      await made.subscribe('/notifications', (data) => notifications.push(data));
      await made.subscribe('/news', (data) => news.push(data));
      return { client: made, notifications, news };
    }

    async function post(path) {
      const response = await fetch(`${base}${path}`, { method: 'POST' });
      assert.equal(response.status, 200, `POST ${path}`);
      return response.json();
    }

    before(async () => {
      app = await start({ port: 0, host: '127.0.0.1' });
      base = `http://127.0.0.1:${app.port}`;
    });

    after(async () => {
      await Promise.allSettled(clients.map((made) => made.disconnect()));
      await app?.close();
    });

    test('GET / is the app: a login form, then the page that loads /bayeux/client.js', async () => {
      const anonymous = await fetch(`${base}/`);
      assert.equal(anonymous.status, 200);
      assert.match(anonymous.headers.get('content-type'), /^text\/html/);
      assert.match(await anonymous.text(), /<form id="login">/);

      const cookie = await login('page-reader');
      const page = await (await fetch(`${base}/`, { headers: { Cookie: cookie } })).text();
      assert.match(page, /Logged in as <b>page-reader<\/b>/);
      assert.match(page, /<script src="\/bayeux\/client\.js"><\/script>/);

      const script = await fetch(`${base}/bayeux/client.js`);
      assert.equal(script.status, 200);
      assert.match(script.headers.get('content-type'), /javascript/);
      assert.match(await script.text(), /Perihelion/);
    });

    test('POST /notify/:user reaches that user only; POST /broadcast reaches everyone; /service/whoami names the user', async () => {
      // User 42 as a browser would be: the app's cookie on the WebSocket upgrade.
      const alice = await subscribed({ WebSocket: webSocketWithCookie(await login('42')) });
      // User 7 as a Node client: the app's session token in the handshake's ext.token.
      const bobCookie = await login('7');
      const bob = await subscribed({ token: bobCookie.slice('sid='.length) });
      assert.equal(alice.client.transport, 'websocket');

      assert.deepEqual(await alice.client.request('/service/whoami', {}), { user: '42' });
      assert.deepEqual(await bob.client.request('/service/whoami', {}), { user: '7' });

      assert.deepEqual(await post('/notify/42?text=for%2042'), { reached: 1 });
      const received = await next(alice.notifications);
      assert.equal(received.text, 'for 42');
      assert.equal(received.from, framework.toLowerCase());

      // A notice for 42 that went astray would have reached user 7 before the one sent to 7 after it.
      assert.deepEqual(await post('/notify/7?text=for%207'), { reached: 1 });
      assert.equal((await next(bob.notifications)).text, 'for 7');
      assert.deepEqual(bob.notifications.items, [], 'user 7 got nothing meant for 42');
      assert.deepEqual(alice.notifications.items, [], 'user 42 got nothing meant for 7');

      assert.deepEqual(await post('/notify/nobody'), { reached: 0 });

      assert.deepEqual(await post('/broadcast?text=hello%20all'), { published: true });
      assert.equal((await next(alice.news)).text, 'hello all');
      assert.equal((await next(bob.news)).text, 'hello all');
    });

    test('every session of a user is reached: a second login of the same user on long-polling', async () => {
      const first = await subscribed({ WebSocket: webSocketWithCookie(await login('multi')) });
      // Long-polling sends the cookie as a plain header on the handshake's POST.
      const second = await subscribed({ transports: ['long-polling'], headers: { Cookie: await login('multi') } });
      assert.equal(second.client.transport, 'long-polling');
      assert.deepEqual(await second.client.request('/service/whoami', {}), { user: 'multi' });
      assert.deepEqual(await post('/notify/multi?text=both'), { reached: 2 });
      assert.equal((await next(first.notifications)).text, 'both');
      assert.equal((await next(second.notifications)).text, 'both');
    });

    test('a client without the app login is refused at handshake', async () => {
      const refusal = (error) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, 'handshake-denied');
        assert.equal(error.bayeuxCode, 403);
        return true;
      };
      await assert.rejects(client().connect(), (error) => refusal(error) && /not logged in/.test(error.message));
      await assert.rejects(client({ token: 'not-a-session' }).connect(), (error) => refusal(error) && /unknown or ended app session/.test(error.message));
      await assert.rejects(client({ WebSocket: webSocketWithCookie('sid=forged') }).connect(), refusal);
    });

    test('POST /logout ends the login and its Bayeux sessions', async () => {
      const cookie = await login('leaving');
      const made = client({ WebSocket: webSocketWithCookie(cookie) });
      await made.connect();
      const ended = new Promise((resolve) => made.once('disconnected', resolve));
      const response = await fetch(`${base}/logout`, { method: 'POST', headers: { Cookie: cookie } });
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), { user: 'leaving' });
      await ended;
      assert.deepEqual(await post('/notify/leaving'), { reached: 0 });
      await assert.rejects(client({ WebSocket: webSocketWithCookie(cookie) }).connect(), /unknown or ended app session/);
    });

    test('runs from its one command: node examples/<framework>/app.mjs', async () => {
      const file = new URL(`../${framework.toLowerCase()}/app.mjs`, import.meta.url);
      const child = spawn(process.execPath, [file.pathname], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = once(child, 'exit');
      try {
        let printed = '';
        const port = await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no address printed: ${printed}`)), TIMEOUT);
          child.stdout.on('data', (chunk) => {
            printed += chunk;
            const found = /on http:\/\/localhost:(\d+) /.exec(printed);
            if (found) {
              clearTimeout(timer);
              resolve(Number(found[1]));
            }
          });
          child.once('exit', (code) => reject(new Error(`exited with ${code}: ${printed}`)));
        });
        const url = `http://127.0.0.1:${port}`;
        const response = await fetch(`${url}/login?user=cli`, { method: 'POST' });
        const cookie = response.headers.getSetCookie()[0].split(';')[0];
        const made = new Client(`${url}/bayeux`, { WebSocket, timeout: TIMEOUT, token: cookie.slice('sid='.length) });
        clients.push(made);
        const notifications = inbox();
        await made.subscribe('/notifications', (data) => notifications.push(data));
        const reached = await (await fetch(`${url}/notify/cli?text=from%20the%20command`, { method: 'POST' })).json();
        assert.deepEqual(reached, { reached: 1 });
        assert.equal((await next(notifications)).text, 'from the command');
        await made.disconnect();
      } finally {
        child.kill('SIGTERM');
      }
      const [code, signal] = await exited;
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, 'SIGTERM closes the app and it exits 0');
    });

    test('a bad login is refused by the app', async () => {
      const response = await fetch(`${base}/login?user=${encodeURIComponent('<script>')}`, { method: 'POST' });
      assert.equal(response.status, 400);
    });
  });
}
