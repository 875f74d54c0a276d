/**
 * Perihelion in an Express 5 app: one port, the app's login.
 *   node examples/express/app.mjs        (PORT, default 3000)
 * Mounting: `bayeux.attach(app.listen(port))`: app.listen returns the http.Server; attach puts
 * Perihelion in front of it for /bayeux (HTTP and WebSocket upgrades), and every other request
 * still reaches Express.
 */
import express from 'express';
import { pathToFileURL } from 'node:url';
import { createBayeux, logout, notice } from '../shared/bayeux.mjs';
import { page } from '../shared/page.mjs';
import { COOKIE, USER_NAME, createSessions, readCookie } from '../shared/sessions.mjs';

export async function start({ port = Number(process.env.PORT ?? 3000), host } = {}) {
  const sessions = createSessions();
  const bayeux = createBayeux(sessions);
  const app = express();
  const userOf = (req) => sessions.userOf(readCookie(req.headers.cookie));

  app.get('/', (req, res) => {
    res.type('html').send(page({ framework: 'Express', user: userOf(req) }));
  });

  // The app's own login: a random token in its session store, sent as an HttpOnly cookie. The
  // browser sends it on every request, the Bayeux handshake and WebSocket upgrade included.
  app.post('/login', (req, res) => {
    const user = String(req.query.user ?? '');
    if (!USER_NAME.test(user)) return res.status(400).json({ error: 'user: 1 to 64 letters, digits, - or _' });
    res.cookie(COOKIE, sessions.login(user), { httpOnly: true, sameSite: 'lax' }).json({ user });
  });

  app.post('/logout', (req, res) => {
    const user = logout(bayeux, sessions, readCookie(req.headers.cookie));
    res.clearCookie(COOKIE, { httpOnly: true, sameSite: 'lax' }).json({ user });
  });

  // To every session (tab, device) of one user. A demo: a real app would check who may notify whom.
  app.post('/notify/:user', async (req, res) => {
    const { user } = req.params;
    const reached = await bayeux.deliverToUser(user, '/notifications', notice('express', String(req.query.text ?? `Hello ${user}`)));
    res.json({ reached });
  });

  // To every subscriber of /news.
  app.post('/broadcast', async (req, res) => {
    await bayeux.publish('/news', notice('express', String(req.query.text ?? 'News for everyone')));
    res.json({ published: true });
  });

  const server = await new Promise((resolve, reject) => {
    const server = app.listen(port, host, (error) => (error ? reject(error) : resolve(server)));
  });
  bayeux.attach(server); // ← the mounting line

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
  console.log(`Express + Perihelion on ${url} (Bayeux at ${url}/bayeux)`);
  process.once('SIGINT', () => close().then(() => process.exit(0)));
  process.once('SIGTERM', () => close().then(() => process.exit(0)));
}
