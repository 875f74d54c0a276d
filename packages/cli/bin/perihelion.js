#!/usr/bin/env node
// The `perihelion` command. npm links a package's bin when it installs it, before anything is
// built, and skips a target that does not exist yet: this small file is always there, and loads
// the compiled CLI (the repository's `npm install` builds it; `npm run build` does it again).
import { existsSync } from 'node:fs';

const cli = new URL('../dist/src/bin.js', import.meta.url);
if (!existsSync(cli)) {
  console.error('perihelion: the CLI is not built yet; run `npm run build` at the root of the repository');
  process.exit(1);
}
await import(cli.href);
