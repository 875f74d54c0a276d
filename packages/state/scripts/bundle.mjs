// Builds the <script> file for browsers from the compiled ESM (dist/src): a minified IIFE that
// defines the global `PerihelionState` (replicate, diff, applyPatch, …), served by the server at
// <mount>/state.js.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(root, 'dist/src/index.js')],
  bundle: true,
  target: 'es2020',
  platform: 'browser',
  legalComments: 'none',
  logLevel: 'warning',
  format: 'iife',
  globalName: 'PerihelionState',
  minify: true,
  outfile: join(root, 'dist/perihelion-state.min.js'),
});
