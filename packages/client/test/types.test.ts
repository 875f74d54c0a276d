/**
 * The README's Node set-up, compiled by TypeScript as a Node project compiles it: no DOM library,
 * the library's own declarations checked (`skipLibCheck: false`), strict. The client is written
 * for browsers first; its published types must still stand where the DOM's do not.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

/** The README's example, as a user's module. */
const USER_CODE = `import { WebSocket } from 'ws'; // Node 20 has fetch but no WebSocket: pass one
import { Client, ClientError } from '@perihelion/client';

const client = new Client('http://localhost:8080/bayeux', { WebSocket });
await client.connect();
const sub = await client.subscribe<{ text: string }>('/chat/*', (data, message) => console.log(message.channel, data.text));
await client.publish('/chat/lobby', { text: 'hi' });
const sum = await client.request('/service/sum', { a: 1, b: 2 }, { timeout: 5000 });
console.log(sum instanceof ClientError);
await sub.unsubscribe();
await client.disconnect();
`;

describe('published types', () => {
  it("compile in a Node project without the DOM library, the library's declarations checked", () => {
    // Inside the repository, so that '@perihelion/client' and 'ws' resolve as in a user's project.
    const dir = join(ROOT, 'test-output', 'node-types');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    writeFileSync(join(dir, 'main.ts'), USER_CODE);
    const compilerOptions = { strict: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022'], types: ['node'], skipLibCheck: false, noEmit: true };
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['main.ts'] }));
    const result = spawnSync(process.execPath, [TSC, '-p', dir], { encoding: 'utf8' });
    assert.equal(result.status, 0, `tsc: ${result.stdout}${result.stderr}`);
  });
});
