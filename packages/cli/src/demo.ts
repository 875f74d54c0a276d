/**
 * The demo gallery served by `perihelion serve`: a landing page at `/` and one page per demo
 * (`/chat`, `/ticker`, `/slides`, `/job`, `/board`), plain HTML and JavaScript from
 * packages/cli/public/ that use the server's own browser client (`<mount>/client.js`, and
 * `<mount>/state.js` for the state channels). The server side of each demo lives in ./demos/.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ChannelRule, Perihelion } from '@perihelion/server';
import { installBoard } from './demos/board.js';
import { CHAT_RULES, installChat } from './demos/chat.js';
import { JOB_RULES, installJob } from './demos/job.js';
import { installSlides } from './demos/slides.js';
import { TICKER_RULES, installTicker } from './demos/ticker.js';

const here = dirname(fileURLToPath(import.meta.url));
const publicDir = join(here, '..', '..', 'public');
const cometdDir = dirname(createRequire(import.meta.url).resolve('cometd/package.json'));

const HTML = 'text/html; charset=utf-8';
const JS = 'text/javascript; charset=utf-8';
const SVG = 'image/svg+xml';

/** Only these files are served; nothing derived from the URL reaches the file system. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: join(publicDir, 'index.html'), type: HTML },
  '/chat': { file: join(publicDir, 'chat.html'), type: HTML },
  '/ticker': { file: join(publicDir, 'ticker.html'), type: HTML },
  '/slides': { file: join(publicDir, 'slides.html'), type: HTML },
  '/job': { file: join(publicDir, 'job.html'), type: HTML },
  '/board': { file: join(publicDir, 'board.html'), type: HTML },
  '/common.js': { file: join(publicDir, 'common.js'), type: JS },
  '/index.js': { file: join(publicDir, 'index.js'), type: JS },
  '/chat.js': { file: join(publicDir, 'chat.js'), type: JS },
  '/ticker.js': { file: join(publicDir, 'ticker.js'), type: JS },
  '/slides.js': { file: join(publicDir, 'slides.js'), type: JS },
  '/job.js': { file: join(publicDir, 'job.js'), type: JS },
  '/board.js': { file: join(publicDir, 'board.js'), type: JS },
  '/gallery.css': { file: join(publicDir, 'gallery.css'), type: 'text/css; charset=utf-8' },
  '/favicon.svg': { file: join(publicDir, 'favicon.svg'), type: SVG },
  // Browsers and crawlers ask for it whatever the page says: the same icon.
  '/favicon.ico': { file: join(publicDir, 'favicon.svg'), type: SVG },
};
// The unchanged CometD client, for trying it against this server (`import { CometD } from '/vendor/cometd/cometd.js'`).
for (const name of [
  'cometd.js', 'Client.js', 'Extension.js', 'Transport.js', 'TransportRegistry.js', 'RequestTransport.js',
  'LongPollingTransport.js', 'CallbackPollingTransport.js', 'WebSocketTransport.js', 'Z85.js',
  'AckExtension.js', 'BinaryExtension.js', 'ReloadExtension.js', 'TimeStampExtension.js', 'TimeSyncExtension.js',
]) {
  FILES[`/vendor/cometd/${name}`] = { file: join(cometdDir, name), type: JS };
}

/** The request handler for the gallery's files (the `fallback` of `server.listen`). */
export function demoPage(): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const entry = Object.hasOwn(FILES, path) ? FILES[path] : undefined;
    if (!entry || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    readFile(entry.file).then(
      (body) => res.writeHead(200, { 'Content-Type': entry.type, 'Content-Length': body.length, 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' }).end(req.method === 'HEAD' ? undefined : body),
      () => res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Missing demo file\n'),
    );
  };
}

/**
 * Exactly what the pages need: they publish chat messages and "typing" notices, and call the
 * demos' services. Everything else (prices, job progress, the state channels' patches) is
 * published by the server; the state channels take proposals through /service/state, which
 * the server answers for anyone.
 */
export const DEMO_RULES: ChannelRule[] = [...CHAT_RULES, ...TICKER_RULES, ...JOB_RULES];

export interface Demo {
  /** Resolves once every demo is ready (the state channels exist). */
  ready: Promise<void>;
  /** Stops the demos' timers (they also stop by themselves when the server shuts down). */
  stop(): void;
}

/** The server side of every demo. Its timers never keep the process alive. */
export function installDemo(server: Perihelion, options: { report?: (error: unknown) => void } = {}): Demo {
  const report = options.report ?? ((error: unknown) => console.error('perihelion demo:', error));
  installChat(server);
  const stopTicker = installTicker(server, report);
  const stopJob = installJob(server, report);
  const ready = Promise.all([installSlides(server), installBoard(server)]).then(() => undefined);
  // Reported here too, so that a failure is never an unhandled rejection when nobody awaits `ready`.
  ready.catch(report);
  return {
    ready,
    stop() {
      stopTicker();
      stopJob();
    },
  };
}
