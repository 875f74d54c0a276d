/**
 * The demo landing page served at `/` by `perihelion serve`: a live chat and a shared counter
 * that run on this server through the CometD JavaScript client (served from its npm package).
 * Open it in two tabs and they talk to each other.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ChannelRule, Perihelion } from '@perihelion/server';

const here = dirname(fileURLToPath(import.meta.url));
const publicDir = join(here, '..', '..', 'public');
const cometdDir = dirname(createRequire(import.meta.url).resolve('cometd/package.json'));

/** Only these files are served; nothing derived from the URL reaches the file system. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: join(publicDir, 'index.html'), type: 'text/html; charset=utf-8' },
  '/demo.js': { file: join(publicDir, 'demo.js'), type: 'text/javascript; charset=utf-8' },
};
for (const name of [
  'cometd.js', 'Client.js', 'Extension.js', 'Transport.js', 'TransportRegistry.js', 'RequestTransport.js',
  'LongPollingTransport.js', 'CallbackPollingTransport.js', 'WebSocketTransport.js', 'Z85.js',
  'AckExtension.js', 'BinaryExtension.js', 'ReloadExtension.js', 'TimeStampExtension.js', 'TimeSyncExtension.js',
]) {
  FILES[`/vendor/cometd/${name}`] = { file: join(cometdDir, name), type: 'text/javascript; charset=utf-8' };
}

export function demoPage(): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const entry = FILES[path];
    if (!entry || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    readFile(entry.file).then(
      (body) => res.writeHead(200, { 'Content-Type': entry.type, 'Content-Length': body.length, 'Cache-Control': 'no-cache' }).end(req.method === 'HEAD' ? undefined : body),
      () => res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Missing demo file\n'),
    );
  };
}

/** Exactly what the demo page needs: anyone may chat and click the counter. */
export const DEMO_RULES: ChannelRule[] = [
  { channel: '/chat/demo', publish: 'anyone' },
  { channel: '/service/counter', publish: 'anyone' },
];

/**
 * The server side of the demo: a counter kept by the server. Clients send /service/counter
 * requests; the server changes the count and publishes it on /demo/counter to everyone.
 */
export function installDemo(server: Perihelion): void {
  let count = 0;
  server.subscribe('/service/counter', async (message) => {
    const data = message.data as { op?: unknown } | null;
    if (data?.op === 'increment') count++;
    else if (data?.op === 'reset') count = 0;
    await server.publish('/demo/counter', { count });
    return { count };
  });
}
