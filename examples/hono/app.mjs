/**
 * Perihelion in a Hono app on Node (@hono/node-server): one port, the app's login.
 *   node examples/hono/app.mjs        (PORT, default 3000)
 * Mounting: `bayeux.attach(serve({ fetch: app.fetch, port }))`: serve returns the http.Server it
 * runs Hono on; attach puts Perihelion in front of Hono for /bayeux (HTTP and WebSocket upgrades),
 * and every other request still reaches Hono. Perihelion answers from Node's own request and
 * socket, so Hono's fetch adaptor never sees its long-polls, streams or upgrades.
 */
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import { once } from 'node:events';
import { pathToFileURL } from 'node:url';
import { createBayeux, logout, notice } from '../shared/bayeux.mjs';
import { page } from '../shared/page.mjs';
import { COOKIE, USER_NAME, createSessions } from '../shared/sessions.mjs';

export async function start({ port = Number(process.env.PORT ?? 3000), host } = {}) {
  const sessions = createSessions();
  const bayeux = createBayeux(sessions);
  const app = new Hono();
  const cookie = { path: '/', httpOnly: true, sameSite: 'Lax' };

  app.get('/', (c) => c.html(page({ framework: 'Hono', user: sessions.userOf(getCookie(c, COOKIE)) })));

  // The app's own login: a random token in its session store, sent as an HttpOnly cookie. The
  // browser sends it on every request, the Bayeux handshake and WebSocket upgrade included.
  app.post('/login', (c) => {
    const user = c.req.query('user') ?? '';
    if (!USER_NAME.test(user)) return c.json({ error: 'user: 1 to 64 letters, digits, - or _' }, 400);
    setCookie(c, COOKIE, sessions.login(user), cookie);
    return c.json({ user });
  });

  app.post('/logout', (c) => {
    const user = logout(bayeux, sessions, getCookie(c, COOKIE));
    deleteCookie(c, COOKIE, cookie);
    return c.json({ user });
  });

  // To every session (tab, device) of one user. A demo: a real app would check who may notify whom.
  app.post('/notify/:user', async (c) => {
    const user = c.req.param('user');
    const reached = await bayeux.deliverToUser(user, '/notifications', notice('hono', c.req.query('text') ?? `Hello ${user}`));
    return c.json({ reached });
  });

  // To every subscriber of /news.
  app.post('/broadcast', async (c) => {
    await bayeux.publish('/news', notice('hono', c.req.query('text') ?? 'News for everyone'));
    return c.json({ published: true });
  });

  const server = serve({ fetch: app.fetch, port, hostname: host });
  bayeux.attach(server); // ← the mounting line
  await once(server, 'listening'); // rejects if the port is taken

  return {
    server,
    bayeux,
    port: server.address().port,
    url: `http://localhost:${server.address().port}`,
    async close() {
      await bayeux.close(); // drains the Bayeux sessions, closes their WebSockets
      await new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { url, close } = await start();
  console.log(`Hono + Perihelion on ${url} (Bayeux at ${url}/bayeux)`);
  process.once('SIGINT', () => close().then(() => process.exit(0)));
  process.once('SIGTERM', () => close().then(() => process.exit(0)));
}
