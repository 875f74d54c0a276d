/// <reference path="../../server/test/third-party.d.ts" />
/**
 * A graceful restart as a deploy does it: `perihelion serve` gets SIGTERM, drains and exits, and a
 * new process starts on the same port. The real CometD (npm `cometd` + `cometd-nodejs-client`) and
 * Faye clients, over WebSocket and over long-polling, must find the new server by themselves: new
 * session, subscriptions made again, messages published afterwards delivered. And a session ended
 * with POST /api/disconnect stays ended: the client is told `reconnect: "none"` and does not come back.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { adapt } from 'cometd-nodejs-client';
import { CometD } from 'cometd';
import faye from 'faye';
import { listeningUrl, Poller, start } from './serve-process.js';

adapt();

const KEY = 'restart-test-api-key-0123';
type TransportName = 'websocket' | 'long-polling';
const TRANSPORTS: readonly TransportName[] = ['websocket', 'long-polling'];
const TEST_TIMEOUT = { timeout: 60_000 };
/** CometD backs off 1 s more after each failed attempt and Faye retries every 5 s: a restart costs a few seconds. */
const COME_BACK_MS = 25_000;
/** How long the first server drains (its `--drain-timeout`), with a session holding it open. */
const DRAIN_MS = 2500;

/** A loopback port that was free a moment ago, so that the second server can take the first one's. */
async function freePort(): Promise<number> {
  const probe = createNetServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  probe.close();
  await once(probe, 'close');
  return port;
}

/** One `perihelion serve` process with the HTTP API on. */
class Serve {
  private constructor(
    readonly child: ChildProcessWithoutNullStreams,
    readonly base: string,
    private readonly exited: Promise<number | null>,
  ) {}

  static async start(port: number, args: string[] = []): Promise<Serve> {
    const child = start(['--port', String(port), ...args], { PERIHELION_API_KEY: KEY });
    child.stderr.resume();
    const exited = once(child, 'exit').then(([code]) => code as number | null);
    const base = await listeningUrl(child);
    return new Serve(child, base, exited);
  }

  get bayeux(): string {
    return `${this.base}/bayeux`;
  }

  /** SIGTERM, as a deploy sends it; resolves to the exit code. */
  async stop(): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    return this.exited;
  }

  async api(method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
    const response = await fetch(`${this.base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const json = (await response.json()) as Record<string, unknown>;
    assert.equal(response.status, 200, `${method} ${path}: ${JSON.stringify(json)}`);
    return json;
  }

  async publish(channel: string, data: unknown): Promise<void> {
    await this.api('POST', '/api/publish', { channel, data });
  }

  async subscribers(channel: string): Promise<number> {
    const { channels } = (await this.api('GET', '/api/channels')) as { channels: { channel: string; subscribers: number }[] };
    return channels.find((entry) => entry.channel === channel)?.subscribers ?? 0;
  }

  async stats(): Promise<{ sessions: number; sessionsByTransport: Record<string, number>; messagesIn: number }> {
    return (await this.api('GET', '/api/stats')) as never;
  }
}

/** Resolves when `predicate` holds, checking every 50 ms, or rejects after `ms` saying what it waited for. */
async function waitFor(predicate: () => boolean | Promise<boolean>, ms: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What the tests need of an application using one client: its session, what it received, how to stop. */
interface App {
  readonly received: unknown[];
  /** The current session's clientId, once there is one. */
  clientId(): string | null;
  /** Successful handshakes so far (a new session each). */
  handshakes(): number;
  /** Handshakes the server refused. */
  refusals(): number;
  /** The client considers itself disconnected for good (never true for Faye, which has no such state). */
  stopped(): boolean;
  close(): Promise<void>;
}

/**
 * A CometD application written as CometD's documentation says: subscriptions are made in a
 * /meta/handshake listener, because the client drops them on every new handshake
 * (node_modules/cometd/Client.js #handshake calls clearSubscriptions()) and does not make them again.
 */
function cometdApp(url: string, transport: TransportName, channel: string): App {
  const cometd = new CometD();
  if (transport === 'long-polling') cometd.unregisterTransport('websocket');
  cometd.configure({ url, logLevel: 'warn' });
  const received: unknown[] = [];
  let handshakes = 0;
  let refusals = 0;
  cometd.addListener('/meta/handshake', (reply) => {
    // A handshake that never got an answer (the server was down) has a `failure` and no `error`.
    if (!reply.successful && reply.error !== undefined) refusals++;
    if (!reply.successful) return;
    handshakes++;
    cometd.subscribe(channel, (message) => received.push(message.data));
  });
  cometd.handshake();
  return {
    received,
    clientId: () => cometd.getClientId() ?? null,
    handshakes: () => handshakes,
    refusals: () => refusals,
    stopped: () => cometd.isDisconnected(),
    close: () =>
      new Promise<void>((resolve) => {
        if (cometd.isDisconnected()) return resolve();
        const timer = setTimeout(resolve, 2000);
        cometd.disconnect(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

/** A Faye application: it subscribes once; Faye subscribes again by itself after a new handshake (faye/src/protocol/client.js:121). */
function fayeApp(url: string, transport: TransportName, channel: string): App {
  const client = new faye.Client(url);
  if (transport === 'long-polling') client.disable('websocket');
  const received: unknown[] = [];
  let clientId: string | null = null;
  let handshakes = 0;
  let refusals = 0;
  client.addExtension({
    incoming: (message, next) => {
      if (message.channel === '/meta/handshake' && message.successful === true && typeof message.clientId === 'string') {
        clientId = message.clientId;
        handshakes++;
      }
      if (message.channel === '/meta/handshake' && message.successful === false) refusals++;
      next(message);
    },
  });
  client.subscribe(channel, (data) => received.push(data));
  return {
    received,
    clientId: () => clientId,
    handshakes: () => handshakes,
    refusals: () => refusals,
    stopped: () => false,
    close: async () => {
      // A session the server already ended answers the disconnect with an error: nothing to report.
      const done = client.disconnect();
      if (done) await Promise.race([Promise.resolve(done).catch(() => {}), sleep(2000)]);
    },
  };
}

const CLIENTS = { CometD: cometdApp, Faye: fayeApp } as const;

for (const [name, makeApp] of Object.entries(CLIENTS)) {
  for (const transport of TRANSPORTS) {
    describe(`${name} over ${transport}`, () => {
      const channel = `/restart/${name.toLowerCase()}-${transport}`;

      it('comes back by itself after a graceful restart: new session, subscribed again, receives what is published', TEST_TIMEOUT, async () => {
        const port = await freePort();
        let server = await Serve.start(port, ['--drain-timeout', String(DRAIN_MS)]);
        const apps = [makeApp(server.bayeux, transport, channel)];
        try {
          await waitFor(async () => (await server.subscribers(channel)) === 1, 10_000, 'the first subscription');
          await waitFor(async () => (await server.stats()).sessionsByTransport[transport] === 1, 10_000, `the session to connect over ${transport}`);
          await server.publish(channel, 'before the restart');
          await waitFor(() => apps[0]!.received.length === 1, 5000, 'the message published before the restart');
          const firstSession = apps[0]!.clientId();

          // A session with a message waiting that it never comes for keeps the drain going for
          // the whole drainTimeout, so that the client's connects and a new client's handshakes
          // reach the draining server, not only the closed port.
          const absent = new Poller(server.bayeux);
          await absent.join('/restart/absent');
          await server.publish('/restart/absent', 'never collected');
          const stopped = server.stop();
          await sleep(300);
          apps.push(makeApp(server.bayeux, transport, channel));
          assert.equal(await stopped, 0, 'the first server exits 0 after SIGTERM');
          assert.ok(apps[1]!.refusals() >= 1, 'the draining server refused the new client\'s handshake');
          server = await Serve.start(port);

          const handshakes = (): string => `handshakes: ${apps.map((app) => app.handshakes()).join(' and ')}`;
          await waitFor(async () => (await server.subscribers(channel)) === 2, COME_BACK_MS, () => `both ${name} clients to come back and subscribe again (${handshakes()})`);
          // Both sessions connect again, each over the transport under test, with one exception
          // that is Faye's own: a Faye client whose WebSocket probe ran while no server listened
          // (the one started mid-drain) keeps that socket marked failed and stays on long-polling
          // until its next handshake (faye/src/transport/web_socket.js: a socket that never
          // connected settles 'failed'; transport.js get() takes the next usable type). The client
          // that had connected over WebSocket must be back on it.
          const midDrainMayPoll = name === 'Faye' && transport === 'websocket';
          let byTransport: Record<string, number> = {};
          await waitFor(
            async () => {
              byTransport = (await server.stats()).sessionsByTransport;
              const onTransport = byTransport[transport] ?? 0;
              return midDrainMayPoll ? onTransport >= 1 && onTransport + (byTransport['long-polling'] ?? 0) === 2 : onTransport === 2;
            },
            COME_BACK_MS,
            () => `the new sessions to connect over ${transport} (sessions by transport: ${JSON.stringify(byTransport)})`,
          );
          assert.equal(apps[0]!.handshakes(), 2, 'one new handshake');
          assert.notEqual(apps[0]!.clientId(), firstSession, 'a new session');
          assert.equal(apps[1]!.handshakes(), 1);
          await server.publish(channel, 'after the restart');
          await waitFor(() => apps.every((app) => app.received.includes('after the restart')), 5000, 'the message published after the restart');
          assert.deepEqual(apps[0]!.received, ['before the restart', 'after the restart']);
          assert.deepEqual(apps[1]!.received, ['after the restart']);
        } finally {
          await Promise.all(apps.map((app) => app.close().catch(() => {})));
          await server.stop();
        }
      });

      it('stays away after POST /api/disconnect: the session ends and the client does not handshake again', TEST_TIMEOUT, async () => {
        const server = await Serve.start(0);
        const app = makeApp(server.bayeux, transport, channel);
        try {
          await waitFor(async () => (await server.subscribers(channel)) === 1, 10_000, 'the subscription');
          await waitFor(async () => (await server.stats()).sessionsByTransport[transport] === 1, 10_000, `the session to connect over ${transport}`);
          const clientId = app.clientId();
          assert.ok(clientId);
          await sleep(200); // the connect that follows the subscription is held by now
          assert.deepEqual(await server.api('POST', '/api/disconnect', { clientId }), { disconnected: 1 });
          // A client that read the answer as anything but "stay away" would be back within
          // milliseconds (connect, 402, handshake); this also covers CometD's first backoff (1 s).
          await sleep(2500);
          assert.equal((await server.stats()).sessions, 0, 'no new session');
          assert.equal(app.handshakes(), 1, 'no new handshake');
          if (name === 'CometD') assert.equal(app.stopped(), true, 'CometD reports itself disconnected');
          await server.publish(channel, 'after the disconnect');
          await sleep(300);
          assert.deepEqual(app.received, []);
        } finally {
          await app.close().catch(() => {});
          await server.stop();
        }
      });
    });
  }
}
