/**
 * Perihelion in a Fastify 5 app: one port, the app's login.
 *   node examples/fastify/app.mjs        (PORT, default 3000)
 * Mounting: Fastify's `serverFactory` option makes the http.Server, and `bayeux.attach` puts
 * Perihelion in front of Fastify's handler on it for /bayeux (HTTP and WebSocket upgrades):
 *   serverFactory: (handler) => { const server = http.createServer(handler); bayeux.attach(server); return server; }
 * (`bayeux.attach(fastify.server)` works too when listening on one address; listening on
 * `localhost`, Fastify opens a second server for the other address, which serverFactory also
 * makes and attach alone would miss.) Fastify's own body parsing never sees Perihelion's requests.
 */
import Fastify from 'fastify';
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { createBayeux, logout, notice } from '../shared/bayeux.mjs';
import { page } from '../shared/page.mjs';
import { COOKIE, USER_NAME, createSessions, readCookie, sessionCookie } from '../shared/sessions.mjs';

export async function start({ port = Number(process.env.PORT ?? 3000), host = 'localhost' } = {}) {
  const sessions = createSessions();
  const bayeux = createBayeux(sessions);
  const fastify = Fastify({
    serverFactory: (handler) => {
      const server = http.createServer(handler);
      bayeux.attach(server); // ← the mounting line
      return server;
    },
  });
  // fastify.close() first drains Perihelion's sessions and closes their WebSockets.
  fastify.addHook('preClose', () => bayeux.close());

  const userOf = (request) => sessions.userOf(readCookie(request.headers.cookie));

  fastify.get('/', (request, reply) => {
    reply.type('text/html; charset=utf-8').send(page({ framework: 'Fastify', user: userOf(request) }));
  });

  // The app's own login: a random token in its session store, sent as an HttpOnly cookie. The
  // browser sends it on every request, the Bayeux handshake and WebSocket upgrade included.
  fastify.post('/login', (request, reply) => {
    const user = String(request.query.user ?? '');
    if (!USER_NAME.test(user)) return reply.code(400).send({ error: 'user: 1 to 64 letters, digits, - or _' });
    reply.header('set-cookie', sessionCookie(sessions.login(user))).send({ user });
  });

  fastify.post('/logout', (request, reply) => {
    const user = logout(bayeux, sessions, readCookie(request.headers.cookie));
    reply.header('set-cookie', `${COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0`).send({ user });
  });

  // To every session (tab, device) of one user. A demo: a real app would check who may notify whom.
  fastify.post('/notify/:user', async (request) => {
    const { user } = request.params;
    const reached = await bayeux.deliverToUser(user, '/notifications', notice('fastify', String(request.query.text ?? `Hello ${user}`)));
    return { reached };
  });

  // To every subscriber of /news.
  fastify.post('/broadcast', async (request) => {
    await bayeux.publish('/news', notice('fastify', String(request.query.text ?? 'News for everyone')));
    return { published: true };
  });

  await fastify.listen({ port, host });
  const { port: bound } = fastify.server.address();
  return {
    server: fastify.server,
    bayeux,
    port: bound,
    url: `http://localhost:${bound}`,
    close: () => fastify.close(),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { url, close } = await start();
  console.log(`Fastify + Perihelion on ${url} (Bayeux at ${url}/bayeux)`);
  process.once('SIGINT', () => close().then(() => process.exit(0)));
  process.once('SIGTERM', () => close().then(() => process.exit(0)));
}
