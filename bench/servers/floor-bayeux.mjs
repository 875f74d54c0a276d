// The Bayeux floor: not a peer, a reference, for the connection set-up. The Node floor's subscribers
// send and receive nothing (the open WebSocket is the subscription); a Bayeux client cannot set up
// without a frame each way. This is the least a Bayeux server on `ws` does for the set-up the
// Perihelion client (and the bench's Perihelion subscribers) uses: read the one frame carrying the
// handshake, the subscribe and the first connect, parse it (JSON.parse, no checks), answer the
// handshake with an id and the subscribe in one frame built by string concatenation, hold the
// connect. No validation, extensions, sessions beyond an id, history, presence, limits or timers
// per connection: the tables then show what the protocol's frames cost Node (this ÷ the Node floor)
// and what Perihelion adds to them (Perihelion ÷ this).
//
// A publish writes one frame, built once, to the TCP socket of every subscriber, as the Node floor
// does; the bench runs this server only in the idle scenario (bench/scenarios.mjs).
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { frameOf, listenOnLoopback, runServer } from './common.mjs';

const PATH = '/bayeux';
/** A held connect is answered after this long, as Perihelion's and Faye's are at their timeout. */
const HOLD_MS = 25_000;
const ADVICE = '{"reconnect":"retry","interval":0,"timeout":25000}';

/** Bayeux channel → the TCP sockets under its subscribers' WebSockets. */
const channels = new Map();
/** The held connects: clientId → { ws, id, since }. */
const held = new Map();

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const server = http.createServer((req, res) => res.writeHead(404).end());

server.on('upgrade', (req, socket, head) => {
  if (req.url !== PATH) return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    const mine = { channels: [], clientId: null };
    ws.on('message', (data) => answer(ws, socket, mine, data));
    ws.on('close', () => {
      for (const channel of mine.channels) channels.get(channel)?.delete(socket);
      if (mine.clientId) held.delete(mine.clientId);
    });
  });
});

/** One frame in: the replies out in one frame, the connect held. */
function answer(ws, socket, mine, data) {
  let messages;
  try {
    messages = JSON.parse(data.toString());
  } catch {
    return ws.close(1007, 'not JSON');
  }
  const replies = [];
  for (const message of Array.isArray(messages) ? messages : [messages]) {
    const id = message.id === undefined ? '' : `,"id":${JSON.stringify(message.id)}`;
    if (message.channel === '/meta/handshake') {
      // The messages after a bundled handshake speak for the session it makes.
      mine.clientId = randomBytes(12).toString('hex');
      const bundle = message.ext?.bundle === true ? ',"ext":{"bundle":true}' : '';
      replies.push(`{"channel":"/meta/handshake","successful":true,"version":"1.0","supportedConnectionTypes":["websocket"],"clientId":"${mine.clientId}","advice":${ADVICE}${bundle}${id}}`);
    } else if (message.channel === '/meta/subscribe') {
      for (const channel of [message.subscription].flat()) {
        let members = channels.get(channel);
        if (!members) channels.set(channel, (members = new Set()));
        members.add(socket);
        mine.channels.push(channel);
      }
      replies.push(`{"channel":"/meta/subscribe","successful":true,"subscription":${JSON.stringify(message.subscription)},"clientId":"${mine.clientId}"${id}}`);
    } else if (message.channel === '/meta/connect' && mine.clientId) {
      held.set(mine.clientId, { ws, id, since: Date.now() });
    }
  }
  if (replies.length > 0) ws.send(`[${replies.join(',')}]`);
}

// One sweep for every held connect, not a timer per connection.
setInterval(() => {
  const before = Date.now() - HOLD_MS;
  for (const [clientId, connect] of held) {
    if (connect.since >= before) continue;
    held.delete(clientId);
    connect.ws.send(`[{"channel":"/meta/connect","successful":true,"clientId":"${clientId}","advice":${ADVICE}${connect.id}}]`);
  }
}, 5_000).unref();

await runServer({
  name: 'floor-bayeux',
  start: () => listenOnLoopback(server, PATH),
  publish: (key, data) => {
    const channel = `/bench/${key}`;
    const members = channels.get(channel);
    if (!members || members.size === 0) return;
    const frame = frameOf(`[{"channel":"${channel}","data":${JSON.stringify(data)}}]`);
    for (const socket of members) socket.write(frame);
  },
  stop: async () => {
    for (const members of channels.values()) for (const socket of members) socket.destroy();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(() => resolve()));
  },
});
