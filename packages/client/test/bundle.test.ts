/** The browser build: small, self-contained, free of Node modules, and usable from a script tag. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { gzipSync } from 'node:zlib';

const require = createRequire(import.meta.url);
const minified = require.resolve('@perihelion/client/bundle');
const srcDir = join(dirname(minified), 'src');

/**
 * The limit the script build must stay under, minified and gzipped: every transport, recovery,
 * tab sharing, presence and the typed-event helper. Raised from 12 KiB when presence and `byType`
 * came in, from 12.5 KiB when the subscribes joined the handshake's frame (one round trip to
 * set up), from 12.75 KiB when a refused WebSocket came to be tried again under a live
 * session (`transportRetry`), from 13 KiB when that move came to be told to every tab
 * (`transport`), from 13.25 KiB when frames came to be kept within the limits the server
 * says at handshake (a frame past them is refused whole), and from 14 KiB when a tab the browser
 * refuses locks came to connect alone (it hung) and a request's timeout to run while offline,
 * from 14.25 KiB when a wildcard's resync came to hold the messages a long-poll brings ahead of it
 * (they were taken for their channel's start, and the replay before them lost), and from 14.5 KiB
 * when a client restarted came to resume from the positions its predecessor saved
 * (`subscribe(…, { since })`, recovery across processes), and from 14.75 KiB when callback-polling
 * came to keep its URLs within what proxies and servers take (a message past it was sent again
 * for ever), and from 14.875 KiB when a recovery the server could not read yet (its node cut off
 * from Redis) came to be asked again rather than taken for a loss: each is the connection and its
 * recovery, not a feature beside them. A feature that
 * needs more belongs in a module of its own.
 */
const GZIP_LIMIT = 15 * 1024;

describe('browser bundle', () => {
  it(`stays under ${GZIP_LIMIT} bytes minified and gzipped`, () => {
    const size = gzipSync(readFileSync(minified), { level: 9 }).length;
    assert.ok(size < GZIP_LIMIT, `perihelion.min.js is ${size} bytes gzipped; the limit is ${GZIP_LIMIT}`);
  });

  it('defines the global Perihelion with Client and ClientError when run as a plain script', () => {
    const sandbox: Record<string, unknown> = {};
    sandbox.globalThis = sandbox;
    runInNewContext(readFileSync(minified, 'utf8'), sandbox);
    const api = sandbox.Perihelion as { Client?: unknown; ClientError?: unknown };
    assert.equal(typeof api?.Client, 'function');
    assert.equal(typeof api?.ClientError, 'function');
  });

  it('never imports a Node module', () => {
    const files: string[] = [];
    const walk = (dir: string): void => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else if (path.endsWith('.js')) files.push(path);
      }
    };
    walk(srcDir);
    files.push(minified, join(dirname(minified), 'perihelion.mjs'));
    assert.ok(files.length > 5);
    for (const file of files) {
      const text = readFileSync(file, 'utf8');
      const imports = [...text.matchAll(/(?:from|import)\s*\(?\s*["']([^"']+)["']/g)].map((m) => m[1]!);
      for (const specifier of imports) {
        assert.ok(specifier.startsWith('.') || specifier.startsWith('@perihelion/protocol'), `${file} imports ${specifier}`);
      }
      assert.doesNotMatch(text, /\brequire\(/, `${file} calls require()`);
    }
  });
});
