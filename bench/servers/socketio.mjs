// Socket.IO 4: WebSocket transport only (no polling, no upgrade dance), default namespace, one room.
import http from 'node:http';
import { Server } from 'socket.io';
import { runServer } from './common.mjs';

const ROOM = 'bench';
const EVENT = 'fanout';

const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
const io = new Server(server, { transports: ['websocket'], serveClient: false });
io.on('connection', (socket) => {
  // The client's "subscribe": join a room, acknowledged like a Bayeux subscribe reply.
  socket.on('subscribe', (room, ack) => {
    socket.join(String(room));
    if (typeof ack === 'function') ack(true);
  });
});

await runServer({
  name: 'socketio',
  start: () =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve({ port: server.address().port, path: '/socket.io/' }));
    }),
  publish: (data) => {
    io.to(ROOM).emit(EVENT, data);
  },
  stop: async () => {
    await new Promise((resolve) => io.close(() => resolve()));
  },
});
