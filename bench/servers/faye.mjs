// Faye 1.4: NodeAdapter mounted at /faye on a node:http server, its in-memory engine.
import http from 'node:http';
import faye from 'faye';
import { listenOnLoopback, runServer } from './common.mjs';

const PATH = '/faye';

const bayeux = new faye.NodeAdapter({ mount: PATH, timeout: 25 });
const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
bayeux.attach(server);
const client = bayeux.getClient();

await runServer({
  name: 'faye',
  start: () => listenOnLoopback(server, PATH),
  publish: (key, data) => {
    client.publish(`/bench/${key}`, data);
  },
  stop: async () => {
    try {
      bayeux.close();
    } catch {}
    server.close();
  },
});
