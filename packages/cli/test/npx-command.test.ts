/**
 * The `perihelion` command the way the README has a user run it after `npm install`:
 * `npx perihelion …` from the repository, through the bin link npm made at install time.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, lstatSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const LINK = join(ROOT, 'node_modules', '.bin', 'perihelion');
const LAUNCHER = join(ROOT, 'packages', 'cli', 'bin', 'perihelion.js');
// A test must never reach the registry: with the link in place npx runs the local command.
const NPX_ENV = { ...process.env, npm_config_offline: 'true', PORT: '', HOST: '' };

describe('npx perihelion', () => {
  it('npm install linked the command to the launcher that is in the repository', () => {
    assert.ok(lstatSync(LINK, { throwIfNoEntry: false })?.isSymbolicLink(), `no ${LINK}: npm did not link the perihelion command`);
    assert.equal(realpathSync(LINK), LAUNCHER);
  });

  it('prints the help', () => {
    const result = spawnSync('npx', ['perihelion', '--help'], { cwd: ROOT, env: NPX_ENV, encoding: 'utf8', timeout: 30_000 });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^Usage: perihelion /m);
    assert.match(result.stdout, /serve/);
  });

  it('serves: npx perihelion serve answers /health, and stops on SIGTERM', { timeout: 30_000 }, async () => {
    // npx runs the command in a child of its own: a process group of their own ends both.
    const child = spawn('npx', ['perihelion', 'serve', '--port', '0', '--host', '127.0.0.1'], { cwd: ROOT, env: NPX_ENV, detached: true });
    try {
      const url = await new Promise<string>((resolveUrl, reject) => {
        let output = '';
        child.stdout.on('data', (chunk: Buffer) => {
          output += String(chunk);
          const match = /listening on (http:\/\/\S+)/.exec(output);
          if (match) resolveUrl(match[1]!);
        });
        child.stderr.resume();
        child.once('exit', (code) => reject(new Error(`npx perihelion serve exited (${code}) before listening: ${output}`)));
      });
      const health = await fetch(new URL('/health', url));
      assert.equal(health.status, 200);
    } finally {
      const exited = new Promise((done) => child.once('exit', done));
      if (child.exitCode === null) process.kill(-child.pid!, 'SIGTERM');
      await exited;
    }
  });

  it('without a build, the launcher says how to build instead of a stack trace', () => {
    const copy = mkdtempSync(join(tmpdir(), 'perihelion-launcher-'));
    try {
      cpSync(LAUNCHER, join(copy, 'bin', 'perihelion.js'));
      const result = spawnSync(process.execPath, [join(copy, 'bin', 'perihelion.js'), '--help'], { encoding: 'utf8' });
      assert.equal(result.status, 1);
      assert.match(result.stderr, /not built yet; run `npm run build`/);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});
