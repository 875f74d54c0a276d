// Builds the browser files from the compiled ESM (dist/src): one ESM bundle and one minified
// IIFE for a <script> tag that defines the global `Perihelion`. esbuild: one small binary, no
// plugins, bundles and minifies in one step.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const common = {
  entryPoints: [join(root, 'dist/src/index.js')],
  bundle: true,
  target: 'es2020',
  platform: 'browser',
  legalComments: 'none',
  logLevel: 'warning',
};
await build({ ...common, format: 'esm', outfile: join(root, 'dist/perihelion.mjs') });
await build({ ...common, format: 'iife', globalName: 'Perihelion', minify: true, outfile: join(root, 'dist/perihelion.min.js') });
