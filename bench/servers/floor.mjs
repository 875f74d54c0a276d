// The Node floor: not a peer, a reference. A bare `ws` server with no protocol at all: the open
// WebSocket to /sub?id=<channels> is the subscription (as with Nchan, so the same subscribers
// serve both), and a publish writes one frame, built once, to the TCP socket of every subscriber.
// No sessions, queues, history, acknowledgements or limits: the least any Node server on `ws`
// spends per connection and per delivery, so the tables show what Perihelion adds on top of Node
// and what is Node's own.
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { listenOnLoopback, runServer } from './common.mjs';

const PATH = '/sub';
/** channel key → the TCP sockets under its subscribers' WebSockets */
const channels = new Map();

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
/** The channel keys an upgrade asks for: `/sub?id=a,b`; none for any other request. */
function keysOf(rawUrl) {
  try {
    const url = new URL(rawUrl ?? '/', 'http://localhost');
    return url.pathname === PATH ? (url.searchParams.get('id') ?? '').split(',').filter(Boolean) : [];
  } catch {
    return []; // not a URL at all
  }
}

server.on('upgrade', (req, socket, head) => {
  const keys = keysOf(req.url);
  if (keys.length === 0) return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    for (const key of keys) {
      let members = channels.get(key);
      if (!members) channels.set(key, (members = new Set()));
      members.add(socket);
    }
    ws.on('close', () => {
      for (const key of keys) channels.get(key)?.delete(socket);
    });
  });
});

/** One unmasked text frame (RFC 6455 §5.2): FIN + opcode 1, the length in 7, 16 or 64 bits, the UTF-8 of `text`. */
function frameOf(text) {
  const body = Buffer.from(text);
  const n = body.length;
  const header = Buffer.alloc(n < 126 ? 2 : n < 65_536 ? 4 : 10);
  header[0] = 0x81;
  if (n < 126) {
    header[1] = n;
  } else if (n < 65_536) {
    header[1] = 126;
    header.writeUInt16BE(n, 2);
  } else {
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([header, body]);
}

await runServer({
  name: 'floor',
  start: () => listenOnLoopback(server, PATH),
  publish: (key, data) => {
    const members = channels.get(key);
    if (!members || members.size === 0) return;
    const frame = frameOf(JSON.stringify(data));
    for (const socket of members) socket.write(frame);
  },
  stop: async () => {
    for (const members of channels.values()) for (const socket of members) socket.destroy();
    await new Promise((resolve) => server.close(() => resolve()));
  },
});
