// The Node floor: not a peer, a reference. A bare `ws` server with no protocol at all: the open
// WebSocket to /sub?id=<channels> is the subscription (as with Nchan, so the same subscribers
// serve both), and a publish writes one frame, built once, to the TCP socket of every subscriber.
// No sessions, queues, history, acknowledgements or limits: the least any Node server on `ws`
// spends per connection and per delivery, so the tables show what Perihelion adds on top of Node
// and what is Node's own.
//
// Long-polling has no such protocol-free form: a poll is an HTTP request whose body says who
// polls. So for the long-polling scenario the floor is the least a Bayeux long-polling server on
// node:http does, for the same subscribers as Perihelion's and Faye's: read the POSTed body and
// parse it (JSON.parse, no checks), answer a handshake with an id and a subscribe at once, hold
// a connect, and answer it with the messages published meanwhile, built by string concatenation.
// No extensions, validation, limits, advice, history or timers per request.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { frameOf, listenOnLoopback, runServer } from './common.mjs';

const PATH = '/sub';
/** channel key → the TCP sockets under its subscribers' WebSockets */
const channels = new Map();

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === PATH) return longPoll(req, res);
  res.writeHead(404).end();
});

// ---------------------------------------------------------------- long-polling

/** A held connect is answered empty after this long, before the subscribers' own 70 s give up. */
const HOLD_MS = 25_000;
/** clientId → its poller: the connect held (a response, or null) and the messages waiting for one. */
const pollers = new Map();
/** Bayeux channel → the pollers subscribed to it. */
const polled = new Map();
const CONNECT_REPLY = '{"channel":"/meta/connect","successful":true}';

function longPoll(req, res) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let messages;
    try {
      messages = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      return answer(res, '[]', 400);
    }
    const replies = [];
    let held = null;
    for (const message of Array.isArray(messages) ? messages : [messages]) {
      if (message.channel === '/meta/handshake') {
        const clientId = randomBytes(12).toString('hex');
        pollers.set(clientId, { res: null, since: 0, queue: [] });
        replies.push(`{"channel":"/meta/handshake","successful":true,"version":"1.0","supportedConnectionTypes":["long-polling"],"clientId":"${clientId}"}`);
      } else if (message.channel === '/meta/subscribe') {
        const poller = pollers.get(message.clientId);
        for (const channel of [message.subscription].flat()) {
          let members = polled.get(channel);
          if (!members) polled.set(channel, (members = new Set()));
          if (poller) members.add(poller);
        }
        replies.push(`{"channel":"/meta/subscribe","successful":true,"subscription":${JSON.stringify(message.subscription)}}`);
      } else if (message.channel === '/meta/connect') {
        const poller = pollers.get(message.clientId);
        // A lone connect with nothing waiting is held; any other is answered now, with what waits.
        if (poller && messages.length === 1 && message.advice?.timeout !== 0 && poller.queue.length === 0) held = poller;
        else {
          if (poller) replies.push(...poller.queue.splice(0));
          replies.push(CONNECT_REPLY);
        }
      }
    }
    if (held) {
      held.res?.end(); // a client never holds two; this one gave up on the other
      held.res = res;
      held.since = Date.now();
    } else answer(res, `[${replies.join(',')}]`);
  });
}

function answer(res, body, status = 200) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** Answers a held connect with what waits for its poller. */
function release(poller) {
  const res = poller.res;
  poller.res = null;
  const queue = poller.queue.splice(0);
  answer(res, queue.length === 0 ? `[${CONNECT_REPLY}]` : `[${queue.join(',')},${CONNECT_REPLY}]`);
}

// One sweep for every poller, not a timer per held request.
setInterval(() => {
  const before = Date.now() - HOLD_MS;
  for (const poller of pollers.values()) if (poller.res && poller.since < before) release(poller);
}, 5_000).unref();

function publishToPollers(channel, data) {
  const members = polled.get(channel);
  if (!members || members.size === 0) return;
  const text = `{"channel":"${channel}","data":${JSON.stringify(data)}}`;
  for (const poller of members) {
    poller.queue.push(text);
    if (poller.res) release(poller);
  }
}
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

await runServer({
  name: 'floor',
  start: () => listenOnLoopback(server, PATH),
  publish: (key, data) => {
    if (process.env.BENCH_TRANSPORT === 'long-polling') return publishToPollers(`/bench/${key}`, data);
    const members = channels.get(key);
    if (!members || members.size === 0) return;
    const frame = frameOf(JSON.stringify(data));
    for (const socket of members) socket.write(frame);
  },
  stop: async () => {
    for (const members of channels.values()) for (const socket of members) socket.destroy();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(() => resolve()));
  },
});
