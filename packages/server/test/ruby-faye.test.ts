/**
 * Interoperability with the Ruby Faye client (Debian's `ruby-faye`: Faye 1.4 on EventMachine, its
 * cookies kept by the `cookiejar` gem), in its plain setup, over WebSocket and long-polling under
 * the default settings: handshake, wildcard subscribe, publish, receive, and a server restart; and
 * refused its WebSocket (`maxWebsocketsPerIp`), it is served over long-polling.
 * `.ci/run` installs the package; without it these tests fail saying how to install it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { createServer, type Perihelion, type ServerOptions } from '../src/index.js';
import { waitFor } from './helpers.js';

const SCRIPT = fileURLToPath(new URL('../../test/fixtures/ruby-faye-client.rb', import.meta.url));
const OPTIONS: ServerOptions = { channels: [{ channel: '/ruby/**', publish: 'anyone' }], drainTimeout: 500, pingInterval: 0 };
const TEST_TIMEOUT = { timeout: 30_000 };

function assertRubyFaye(): void {
  const probe = spawnSync('ruby', ['-e', 'require "faye"; print Faye::VERSION'], { encoding: 'utf8' });
  assert.ok(probe.status === 0, `these tests need the Ruby Faye client: apt-get install -y ruby-faye (${probe.error?.message ?? probe.stderr.trim()})`);
}

interface RubyEvent {
  event: string;
  channel?: string;
  data?: unknown;
  connectionType?: string;
  successful?: boolean;
  error?: string | null;
}

/** The Ruby client as a child process: its events as they arrive, and publishes sent on stdin. */
class RubyFaye {
  readonly events: RubyEvent[] = [];
  private readonly child: ChildProcessWithoutNullStreams;
  private stderr = '';

  constructor(url: string, transport: 'websocket' | 'long-polling', pattern: string) {
    this.child = spawn('ruby', [SCRIPT, url, transport, pattern]);
    let pending = '';
    this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) if (line.trim() !== '') this.events.push(JSON.parse(line) as RubyEvent);
    });
    this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
  }

  count(event: string): number {
    return this.events.filter((e) => e.event === event).length;
  }

  messages(): [string | undefined, unknown][] {
    return this.events.filter((e) => e.event === 'message').map((e) => [e.channel, e.data]);
  }

  async until(predicate: (events: RubyEvent[]) => boolean, what: string, ms = 15_000): Promise<void> {
    await waitFor(() => predicate(this.events), ms, () => `${what}; the Ruby client said ${JSON.stringify(this.events)} ${this.stderr.slice(-2000)}`);
  }

  publish(channel: string, data: unknown): void {
    this.child.stdin.write(`${channel} ${JSON.stringify(data)}\n`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

for (const transport of ['websocket', 'long-polling'] as const) {
  describe(`Ruby Faye client over ${transport}`, () => {
    let server: Perihelion;
    let port: number;
    let url: string;
    const clients: RubyFaye[] = [];

    before(async () => {
      assertRubyFaye();
      server = createServer(OPTIONS);
      port = (await server.listen({ port: 0, host: '127.0.0.1' })).port;
      url = `http://127.0.0.1:${port}/bayeux`;
    });

    after(async () => {
      await Promise.all(clients.map((c) => c.stop()));
      await server.close();
    });

    function start(pattern: string): RubyFaye {
      const client = new RubyFaye(url, transport, pattern);
      clients.push(client);
      return client;
    }

    it('handshakes with the default cookie, subscribes to a wildcard, publishes and receives', TEST_TIMEOUT, async () => {
      const client = start('/ruby/**');
      await client.until((events) => events.some((e) => e.event === 'subscribed'), 'the subscription');
      assert.equal(client.events.find((e) => e.event === 'connect')?.connectionType, transport);
      await server.publish('/ruby/a/b', { from: 'server' });
      client.publish('/ruby/c', { from: 'ruby' });
      await client.until((events) => events.filter((e) => e.event === 'message').length === 2, 'both messages');
      assert.deepEqual(client.messages().sort(), [['/ruby/a/b', { from: 'server' }], ['/ruby/c', { from: 'ruby' }]]);
      assert.equal(client.count('handshake'), 1, 'the client handshook more than once');
      assert.equal(client.count('error'), 0);
    });

    it('comes back by itself after the server restarts on the same port, and receives again', TEST_TIMEOUT, async () => {
      const client = start('/ruby/restart/*');
      await client.until((events) => events.some((e) => e.event === 'subscribed'), 'the subscription');
      await server.close();
      server = createServer(OPTIONS);
      let resubscribed = false;
      server.on('subscribe', (_session, channel) => (resubscribed ||= channel === '/ruby/restart/*'));
      await server.listen({ port, host: '127.0.0.1' });
      await client.until((events) => events.filter((e) => e.event === 'handshake' && e.successful === true).length >= 2, 'a handshake with the new server');
      // Faye subscribes again by itself after its new handshake.
      await waitFor(() => resubscribed, 15_000, 'the Ruby client to subscribe again');
      await server.publish('/ruby/restart/x', 'after the restart');
      await client.until((events) => events.some((e) => e.event === 'message' && e.data === 'after the restart'), 'the message published after the restart');
    });
  });
}

describe('Ruby Faye client refused a WebSocket (maxWebsocketsPerIp)', () => {
  let server: Perihelion;
  let held: WebSocket;
  let client: RubyFaye | undefined;

  before(async () => {
    assertRubyFaye();
    server = createServer({ ...OPTIONS, maxWebsocketsPerIp: 1 });
    const { port } = await server.listen({ port: 0, host: '127.0.0.1' });
    // Another WebSocket of this address takes the one allowed.
    held = new WebSocket(`ws://127.0.0.1:${port}/bayeux`);
    await once(held, 'open');
    client = new RubyFaye(`http://127.0.0.1:${port}/bayeux`, 'websocket', '/ruby/refused/*');
  });

  after(async () => {
    await client?.stop();
    held.close();
    await server.close();
  });

  it('falls back to long-polling and is served: subscribes, publishes, receives', TEST_TIMEOUT, async () => {
    await client!.until((events) => events.some((e) => e.event === 'subscribed'), 'the subscription');
    await server.publish('/ruby/refused/a', { from: 'server' });
    client!.publish('/ruby/refused/b', { from: 'ruby' });
    await client!.until((events) => events.filter((e) => e.event === 'message').length === 2, 'both messages');
    assert.deepEqual(client!.messages().sort(), [['/ruby/refused/a', { from: 'server' }], ['/ruby/refused/b', { from: 'ruby' }]]);
    assert.ok(server.stats().websocketsRefused >= 1, 'the WebSocket was refused');
    const types = client!.events.filter((e) => e.event === 'connect').map((e) => e.connectionType);
    assert.ok(types.length > 0 && !types.includes('websocket'), `its connects never went over a WebSocket: ${JSON.stringify(types)}`);
  });
});
