// Socket.IO 4: one transport per run (BENCH_TRANSPORT: websocket, or long-polling = Engine.IO
// polling; no upgrade dance), default namespace, a room per channel key.
import http from 'node:http';
import { Server } from 'socket.io';
import { listenOnLoopback, runServer } from './common.mjs';

const EVENT = 'fanout';

const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
const transport = process.env.BENCH_TRANSPORT === 'long-polling' ? 'polling' : 'websocket';
const io = new Server(server, { transports: [transport], serveClient: false });
// The cluster scenario: rooms shared through Redis with the official adapter (BENCH_REDIS_URL).
if (process.env.BENCH_REDIS_URL) {
  const { createAdapter } = await import('@socket.io/redis-adapter');
  const { Redis } = await import('ioredis');
  const pub = new Redis(process.env.BENCH_REDIS_URL);
  const sub = pub.duplicate();
  io.adapter(createAdapter(pub, sub, { key: `${process.env.BENCH_REDIS_PREFIX ?? ''}socket.io` }));
}
io.on('connection', (socket) => {
  // The client's "subscribe": join a room, acknowledged like a Bayeux subscribe reply.
  socket.on('subscribe', (rooms, ack) => {
    socket.join(Array.isArray(rooms) ? rooms.map(String) : String(rooms));
    if (typeof ack === 'function') ack(true);
  });
});

await runServer({
  name: 'socketio',
  start: () => listenOnLoopback(server, '/socket.io/'),
  publish: (key, data) => {
    io.to(key).emit(EVENT, data);
  },
  stop: async () => {
    await new Promise((resolve) => io.close(() => resolve()));
  },
});
