/**
 * Perihelion in a Koa 3 app: one port, the app's login.
 *   node examples/koa/app.mjs        (PORT, default 3000)
 * Mounting: `bayeux.attach(http.createServer(app.callback()))`: Koa's callback is the request
 * handler of a plain http.Server; attach puts Perihelion in front of it for /bayeux (HTTP and
 * WebSocket upgrades), and every other request still reaches Koa. (`bayeux.attach(app.listen(port))`
 * is the same.)
 */
import Router from '@koa/router';
import Koa from 'koa';
import { once } from 'node:events';
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { createBayeux, logout, notice } from '../shared/bayeux.mjs';
import { page } from '../shared/page.mjs';
import { COOKIE, USER_NAME, createSessions } from '../shared/sessions.mjs';

export async function start({ port = Number(process.env.PORT ?? 3000), host } = {}) {
  const sessions = createSessions();
  const bayeux = createBayeux(sessions);
  const app = new Koa();
  const router = new Router();
  const cookie = { httpOnly: true, sameSite: 'lax' };

  router.get('/', (ctx) => {
    ctx.type = 'html';
    ctx.body = page({ framework: 'Koa', user: sessions.userOf(ctx.cookies.get(COOKIE)) });
  });

  // The app's own login: a random token in its session store, sent as an HttpOnly cookie. The
  // browser sends it on every request, the Bayeux handshake and WebSocket upgrade included.
  router.post('/login', (ctx) => {
    const user = String(ctx.query.user ?? '');
    if (!USER_NAME.test(user)) {
      ctx.status = 400;
      ctx.body = { error: 'user: 1 to 64 letters, digits, - or _' };
      return;
    }
    ctx.cookies.set(COOKIE, sessions.login(user), cookie);
    ctx.body = { user };
  });

  router.post('/logout', (ctx) => {
    const user = logout(bayeux, sessions, ctx.cookies.get(COOKIE));
    ctx.cookies.set(COOKIE, null, cookie);
    ctx.body = { user };
  });

  // To every session (tab, device) of one user. A demo: a real app would check who may notify whom.
  router.post('/notify/:user', async (ctx) => {
    const { user } = ctx.params;
    const reached = await bayeux.deliverToUser(user, '/notifications', notice('koa', String(ctx.query.text ?? `Hello ${user}`)));
    ctx.body = { reached };
  });

  // To every subscriber of /news.
  router.post('/broadcast', async (ctx) => {
    await bayeux.publish('/news', notice('koa', String(ctx.query.text ?? 'News for everyone')));
    ctx.body = { published: true };
  });

  app.use(router.routes()).use(router.allowedMethods());

  const server = http.createServer(app.callback());
  bayeux.attach(server); // ← the mounting line
  server.listen(port, host);
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
  console.log(`Koa + Perihelion on ${url} (Bayeux at ${url}/bayeux)`);
  process.once('SIGINT', () => close().then(() => process.exit(0)));
  process.once('SIGTERM', () => close().then(() => process.exit(0)));
}
