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
import { BOARD_CHANNEL, installBoard } from './demos/board.js';
import { CHAT_RULES, installChat } from './demos/chat.js';
import { JOB_RULES, installJob } from './demos/job.js';
import { SLIDES_CHANNEL, installSlides } from './demos/slides.js';
import { TICKER_RULES, answerRecent, publishPrices } from './demos/ticker.js';

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
  /**
   * Resolves once every demo is ready: to true when this process holds the demo's state channels
   * and makes the prices, false when another node of its cluster does.
   */
  ready: Promise<boolean>;
  /** Stops the demos' timers (they also stop by themselves when the server shuts down). */
  stop(): void;
}

/** How often a node of a cluster whose demo another node holds tries to take it over (that node gone), ms. */
export const TAKE_OVER_MS = 5_000;

/**
 * The server side of every demo. Its timers never keep the process alive.
 *
 * Every node of a cluster runs it. The chat and the job answer each node's own clients; the state
 * channels (board, slides) and the prices are the cluster's, held by one node: the first to claim
 * the board. Another node's clients reach the state channels through it (the server relays their
 * requests), and the prices through the bus. Every `takeOverMs` a node that found the demo held
 * elsewhere tries again, and takes it over once that node is gone (the board and slides start
 * afresh); a holder whose state channels were taken over (it was cut off from the cluster) stops
 * its prices.
 */
export function installDemo(server: Perihelion, options: { report?: (error: unknown) => void; takeOverMs?: number } = {}): Demo {
  const report = options.report ?? ((error: unknown) => console.error('perihelion demo:', error));
  installChat(server);
  answerRecent(server);
  const stopJob = installJob(server, report);
  let stopPrices: (() => void) | null = null;
  let watching: NodeJS.Timeout | null = null;
  let stopped = false;
  type Held = { readonly isOpen: boolean; close(): Promise<void> };
  /** The state channels this node holds. */
  const held = new Map<string, Held>();
  // In order, so that of nodes starting together the one that claims the board claims the rest.
  const parts: Array<[string, () => Promise<Held>]> = [
    [BOARD_CHANNEL, () => installBoard(server)],
    [SLIDES_CHANNEL, () => installSlides(server)],
  ];
  /** Claims what this node does not hold yet; resolves to whether it holds everything now. */
  const hold = async (): Promise<boolean> => {
    // Taken over by another node (this one was cut off from the cluster): it makes the prices now.
    for (const [channel, state] of held) if (!state.isOpen) held.delete(channel);
    if (held.size < parts.length && stopPrices !== null) {
      stopPrices();
      stopPrices = null;
    }
    for (const [channel, install] of parts) {
      if (held.has(channel)) continue;
      try {
        held.set(channel, await install());
      } catch (error) {
        if ((error as { code?: unknown } | null)?.code !== 'ERR_STATE_DUPLICATE') throw error;
        // Another node holds a part: the rest goes to it too (a part alone makes no demo).
        await Promise.all([...held.values()].map((state) => state.close()));
        held.clear();
        return false;
      }
    }
    if (!stopped && stopPrices === null) stopPrices = publishPrices(server, report);
    return true;
  };
  const watch = (): void => {
    if (stopped || server.isDraining) return;
    watching = setTimeout(() => {
      if (stopped || server.isDraining) return;
      hold().then(watch, (error: unknown) => (report(error), watch()));
    }, options.takeOverMs ?? TAKE_OVER_MS);
    watching.unref();
  };
  const ready = hold();
  ready.then(watch, watch);
  // Reported here too, so that a failure is never an unhandled rejection when nobody awaits `ready`.
  ready.catch(report);
  return {
    ready,
    stop() {
      stopped = true;
      if (watching) clearTimeout(watching);
      stopPrices?.();
      stopJob();
    },
  };
}
