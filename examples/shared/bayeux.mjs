/**
 * The Perihelion server every example mounts: it authenticates handshakes with the app's own
 * login (sessions.mjs) and answers /service/whoami. Each app.mjs adds it to its framework's
 * http.Server with `bayeux.attach(server)` and calls `deliverToUser` and `publish` from its routes.
 */
import { AuthenticationError, createServer } from '@perihelion/server';
import { COOKIE, readCookie } from './sessions.mjs';

/**
 * The app session a handshake presents: the `sid` cookie (browsers send it on the handshake's
 * POST and on the WebSocket upgrade alike), else the token a Node client put in the handshake's
 * `ext.token` (the client's `token` option), else an `Authorization: Bearer` header.
 */
function presentedToken({ message, request }) {
  const cookie = readCookie(request.headers.cookie, COOKIE);
  if (cookie) return cookie;
  const token = message.ext?.token;
  if (typeof token === 'string' && token !== '') return token;
  const bearer = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '');
  return bearer ? bearer[1] : null;
}

export function createBayeux(sessions, options = {}) {
  const bayeux = createServer({
    path: '/bayeux',
    // Only the app's logged-in users get a session; everyone else is refused at handshake
    // (`403::Unauthorized: …`, advice reconnect "none": the client stops instead of retrying).
    anonymous: false,
    authenticate(handshake) {
      const token = presentedToken(handshake);
      if (!token) throw new AuthenticationError('not logged in: POST /login?user=<name> first');
      const login = sessions.find(token);
      if (!login) throw new AuthenticationError('unknown or ended app session');
      // The Identity: `id` is what deliverToUser, sessionsOf and `user:{id}` rules match.
      return { id: login.user, roles: [], claims: { login: login.id } };
    },
    channels: [
      // Clients may subscribe to /notifications and /news (the default); only the server sends there.
      // Requests on /service/whoami need a rule, as every client publish does.
      { channel: '/service/whoami', publish: 'authenticated' },
    ],
    ...options,
  });

  // A /service listener's return value is the reply to the client's request.
  bayeux.subscribe('/service/whoami', (_message, session) => ({ user: session?.identity?.id ?? null }));
  return bayeux;
}

/**
 * Logs out the app session `token` and ends the Perihelion sessions it opened (this node's; with
 * the Redis engine other nodes hold theirs). Returns the user, or null when the token was unknown.
 */
export function logout(bayeux, sessions, token) {
  const login = sessions.logout(token);
  if (!login) return null;
  for (const session of bayeux.sessionsOf(login.user)) {
    if (session.identity?.claims.login === login.id) session.disconnect();
  }
  return login.user;
}

/** What POST /notify/:user sends, and POST /broadcast publishes. */
export function notice(framework, text) {
  return { text, from: framework, at: new Date().toISOString() };
}
