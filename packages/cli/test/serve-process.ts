/** `perihelion serve` run the way users run it, as a child process, for the tests that stop and start it. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../src/bin.js', import.meta.url));

/** `perihelion serve` on loopback, without the demo page, on a free port unless `args` name one (the last flag wins). */
export function start(args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, [BIN, 'serve', '--port', '0', '--host', '127.0.0.1', '--no-demo', ...args], {
    env: { ...process.env, PORT: '', HOST: '', ...env },
  });
}

/** Resolves to the base URL of the "listening on" line of the start-up summary. */
export function listeningUrl(child: ChildProcessWithoutNullStreams): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += String(chunk);
      const match = /listening on (https?:\/\/\S+)/.exec(output);
      if (match) resolve(match[1]!);
    });
    child.once('exit', () => reject(new Error(`exited before listening: ${output}`)));
  });
}

/** A minimal long-polling client with a cookie, as a browser would be. */
export class Poller {
  private cookie = '';
  clientId = '';
  constructor(private readonly url: string) {}

  async send(messages: object[]): Promise<Record<string, unknown>[]> {
    const response = await fetch(this.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...(this.cookie ? { Cookie: this.cookie } : {}) },
      body: JSON.stringify(messages.map((m) => ({ clientId: this.clientId || undefined, ...m }))),
    });
    const setCookie = response.headers.get('set-cookie');
    if (setCookie) this.cookie = setCookie.split(';')[0]!;
    return (await response.json()) as Record<string, unknown>[];
  }

  async join(channel: string): Promise<void> {
    const [reply] = await this.send([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }]);
    this.clientId = reply!.clientId as string;
    await this.send([{ channel: '/meta/connect', connectionType: 'long-polling' }, { channel: '/meta/subscribe', subscription: channel }]);
  }
}
