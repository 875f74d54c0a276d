/**
 * The browser scripts the server serves under its mount path, so that a page needs nothing but
 * the server:
 * - `GET <mount>/client.js`: the minified `<script>` build of @perihelion/client (defines `Perihelion`);
 * - `GET <mount>/state.js`: that of @perihelion/state (defines `PerihelionState`: replicas of
 *   state channels, diff and applyPatch).
 *
 * Each file is found through the package resolver (the package's `bundle` export), so it works
 * from a workspace checkout and from node_modules alike. It is read once, and a gzip copy made
 * once; an ETag lets browsers revalidate cheaply. When a package was not built (or is not
 * installed) the answer is a 404 that says what to do.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { gzipSync } from 'node:zlib';

interface Script {
  body: Buffer;
  gzip: Buffer;
  etag: string;
}

/** The scripts by file name, and the package whose `bundle` export each is. */
export const BROWSER_SCRIPTS: Readonly<Record<string, string>> = { 'client.js': '@perihelion/client', 'state.js': '@perihelion/state' };

const cache = new Map<string, Script>();

function load(name: string): Script | string {
  const cached = cache.get(name);
  if (cached) return cached;
  const pkg = BROWSER_SCRIPTS[name]!;
  let path: string;
  try {
    path = createRequire(import.meta.url).resolve(`${pkg}/bundle`);
  } catch {
    return `the ${pkg} package is not installed next to @perihelion/server`;
  }
  try {
    const body = readFileSync(path);
    const script = { body, gzip: gzipSync(body, { level: 9 }), etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
    cache.set(name, script);
    return script;
  } catch {
    return `the bundle ${path} has not been built; run "npm run build" at the repository root`;
  }
}

/** Serves `name`, one of BROWSER_SCRIPTS. */
export function serveBrowserScript(name: string, req: IncomingMessage, res: ServerResponse): void {
  const script = load(name);
  if (typeof script === 'string') {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' }).end(`${name} is not available: ${script}\n`);
    return;
  }
  const headers: Record<string, string> = {
    'Content-Type': 'text/javascript; charset=utf-8',
    // Revalidated hourly: a deploy with a new client reaches pages within the hour, and a
    // revalidation costs a 304.
    'Cache-Control': 'public, max-age=3600',
    ETag: script.etag,
    Vary: 'Accept-Encoding',
    'X-Content-Type-Options': 'nosniff',
  };
  if (req.headers['if-none-match'] === script.etag) {
    res.writeHead(304, headers).end();
    return;
  }
  const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
  const body = gzip ? script.gzip : script.body;
  res.writeHead(200, { ...headers, ...(gzip ? { 'Content-Encoding': 'gzip' } : {}), 'Content-Length': String(body.length) });
  res.end(req.method === 'HEAD' ? undefined : body);
}
