/**
 * `GET <mount>/client.js`: the minified `<script>` build of @perihelion/client, so that a page
 * needs nothing but the server (`<script src="/bayeux/client.js">` defines `Perihelion`).
 *
 * The file is found through the package resolver (the `@perihelion/client/bundle` export), so
 * it works from a workspace checkout and from node_modules alike. It is read once, and a gzip
 * copy made once; an ETag lets browsers revalidate cheaply. When the client was not built the
 * answer is a 404 that says how to build it.
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

let cached: Script | null = null;

function load(): Script | string {
  if (cached) return cached;
  let path: string;
  try {
    path = createRequire(import.meta.url).resolve('@perihelion/client/bundle');
  } catch {
    return 'the @perihelion/client package is not installed next to @perihelion/server';
  }
  try {
    const body = readFileSync(path);
    cached = { body, gzip: gzipSync(body, { level: 9 }), etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
    return cached;
  } catch {
    return `the client bundle ${path} has not been built; run "npm run build" at the repository root`;
  }
}

export function serveClientScript(req: IncomingMessage, res: ServerResponse): void {
  const script = load();
  if (typeof script === 'string') {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' }).end(`client.js is not available: ${script}\n`);
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
