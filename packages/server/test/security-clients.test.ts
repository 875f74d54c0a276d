/**
 * The security layer as third-party clients meet it: the real CometD client (npm `cometd` with
 * `cometd-nodejs-client`) and the real Faye client (npm `faye`), over WebSocket and
 * long-polling, passing a JWT in the handshake's `ext.token` (CometD through handshake props,
 * Faye through an extension), with channel rules, subscription tokens and token expiry.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import faye from 'faye';
import { adapt } from 'cometd-nodejs-client';
import { CometD, type Message as CometDMessage } from 'cometd';
import { SignJWT, type JWTPayload } from 'jose';
import type { DisconnectReason, ServerOptions } from '../src/index.js';
import { startServer, waitFor, type TestServer } from './helpers.js';

adapt();

type TransportName = 'websocket' | 'long-polling';
const TRANSPORTS: readonly TransportName[] = ['websocket', 'long-polling'];
const TEST_TIMEOUT = { timeout: 10_000 };

const SECRET = 'perihelion-security-test-secret-0123456789';

const OPTIONS: ServerOptions = {
  open: false,
  anonymous: false,
  jwt: { secret: SECRET },
  channels: [
    { channel: '/chat/**', subscribe: 'authenticated', publish: 'role:writer' },
    { channel: '/private/**', subscribe: 'nobody' },
  ],
};

async function mint(sub: string | null, options: { roles?: string[]; exp?: string | number; secret?: string; claims?: JWTPayload } = {}): Promise<string> {
  const jwt = new SignJWT({ ...options.claims, ...(options.roles ? { roles: options.roles } : {}) })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(options.exp ?? '1h');
  if (sub !== null) jwt.setSubject(sub);
  return jwt.sign(new TextEncoder().encode(options.secret ?? SECRET));
}

/** A token that expires between 1.5 and 2.5 seconds from now (exp has whole seconds). */
const shortLived = (sub: string, roles: string[] = []): Promise<string> => mint(sub, { roles, exp: Math.ceil((Date.now() + 1500) / 1000) });

function recordDisconnects(ts: TestServer): Map<string, DisconnectReason> {
  const reasons = new Map<string, DisconnectReason>();
  ts.server.on('disconnect', (session, reason) => reasons.set(session.id, reason));
  return reasons;
}

/** Handshakes that reached the server, with the token each carried. */
function recordHandshakes(ts: TestServer): { token: unknown }[] {
  const seen: { token: unknown }[] = [];
  ts.server.addExtension({
    incoming(message) {
      if (message.channel === '/meta/handshake') seen.push({ token: message.ext?.token });
      return message;
    },
  });
  return seen;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function onTransport(ts: TestServer, clientId: string, transport: TransportName): Promise<void> {
  await waitFor(() => ts.server.getSession(clientId)?.connectionType === transport, 5000, `the session to connect over ${transport}`);
}

// ================================================================================== CometD

/** A CometD client with promise helpers; `received` holds every message from the server. */
class CometDClient {
  readonly cometd = new CometD();
  readonly received: CometDMessage[] = [];
  /** When set, every /meta/handshake carries it (an application's token source). */
  tokenSource: (() => string) | null = null;

  constructor(url: string, transport: TransportName) {
    if (transport === 'long-polling') this.cometd.unregisterTransport('websocket');
    this.cometd.configure({ url, logLevel: 'warn' });
    this.cometd.registerExtension('record', {
      incoming: (message) => {
        this.received.push(message);
        return message;
      },
      outgoing: (message) => {
        if (message.channel === '/meta/handshake' && this.tokenSource) message.ext = { ...message.ext, token: this.tokenSource() };
        return message;
      },
    });
  }

  get clientId(): string {
    const id = this.cometd.getClientId();
    assert.ok(id, 'the client has a clientId');
    return id;
  }

  /** Handshakes with `ext.token` in the handshake props; resolves with the reply, granted or not. */
  handshake(token?: string): Promise<CometDMessage & { authSuccessful?: boolean }> {
    return new Promise((resolve) => this.cometd.handshake(token !== undefined ? { ext: { token } } : {}, resolve));
  }

  async login(token: string): Promise<void> {
    const reply = await this.handshake(token);
    assert.equal(reply.successful, true, `handshake refused: ${JSON.stringify(reply)}`);
  }

  /** Subscribes; resolves with the server's reply and the list the listener fills. */
  subscribe(channel: string, ext?: object): Promise<{ reply: CometDMessage; messages: CometDMessage[] }> {
    const messages: CometDMessage[] = [];
    return new Promise((resolve) => {
      const listener = (message: CometDMessage): void => void messages.push(message);
      const done = (reply: CometDMessage): void => resolve({ reply, messages });
      if (ext !== undefined) this.cometd.subscribe(channel, listener, { ext }, done);
      else this.cometd.subscribe(channel, listener, done);
    });
  }

  publish(channel: string, data: unknown): Promise<CometDMessage> {
    return new Promise((resolve) => this.cometd.publish(channel, data, resolve));
  }

  /** Disconnects; gives up waiting for the reply after 2 s (the client is disconnected by then either way). */
  disconnect(): Promise<void> {
    if (this.cometd.isDisconnected()) return Promise.resolve();
    return Promise.race([new Promise<void>((resolve) => this.cometd.disconnect(() => resolve())), sleep(2000)]);
  }
}

for (const transport of TRANSPORTS) {
  describe(`security with the CometD client over ${transport}`, () => {
    let ts: TestServer;
    let reasons: Map<string, DisconnectReason>;
    let handshakes: { token: unknown }[];
    const clients: CometDClient[] = [];
    const client = (): CometDClient => {
      const c = new CometDClient(ts.url, transport);
      clients.push(c);
      return c;
    };

    before(async () => {
      ts = await startServer(OPTIONS);
      reasons = recordDisconnects(ts);
      handshakes = recordHandshakes(ts);
    });
    afterEach(async () => {
      await Promise.all(clients.splice(0).map((c) => c.disconnect()));
    });
    after(() => ts.close());

    it('authenticates with ext.token on the handshake, and the channel rules apply to what it does', TEST_TIMEOUT, async () => {
      const writer = client();
      const reader = client();
      const granted = await writer.handshake(await mint('alice', { roles: ['writer'] }));
      assert.equal(granted.successful, true, JSON.stringify(granted));
      assert.equal(granted.authSuccessful, true);
      await reader.login(await mint('bob'));
      await onTransport(ts, writer.clientId, transport);
      await onTransport(ts, reader.clientId, transport);
      assert.equal(ts.server.getSession(writer.clientId)?.identity?.id, 'alice');
      assert.deepEqual(ts.server.getSession(writer.clientId)?.identity?.roles, ['writer']);
      const { reply, messages } = await reader.subscribe('/chat/room');
      assert.equal(reply.successful, true, JSON.stringify(reply));
      const refused = await reader.publish('/chat/room', 'from the reader');
      assert.equal(refused.successful, false);
      assert.match(String(refused.error), /^403:\/chat\/room:Forbidden channel: publish denied by rule \/chat\/\*\*$/);
      assert.equal((await writer.publish('/chat/room', 'hello')).successful, true);
      assert.equal((await writer.publish('/chat/room', 'control')).successful, true);
      await waitFor(() => messages.length === 2, 5000, 'the writer’s messages');
      assert.deepEqual(messages.map((m) => m.data), ['hello', 'control']);
    });

    it('is refused with 403 and stops, without retrying, when the token is invalid or missing', TEST_TIMEOUT, async () => {
      const sessions = ts.server.sessionCount;
      const forged = await mint('alice', { secret: 'another-secret-that-is-long-enough-0000' });
      for (const [token, reason] of [
        [forged, /^403::Unauthorized: invalid token$/],
        [undefined, /^403::Unauthorized: credentials required/],
      ] as const) {
        const c = client();
        const before = handshakes.length;
        const reply = await c.handshake(token);
        assert.equal(reply.successful, false);
        assert.match(String(reply.error), reason);
        assert.equal(reply.advice?.reconnect, 'none');
        await waitFor(() => c.cometd.isDisconnected(), 3000, 'the client to give up');
        assert.equal(handshakes.length, before + 1, 'the client handshook again after advice reconnect none');
      }
      assert.equal(ts.server.sessionCount, sessions);
    });

    it('opens a private channel with a subscription token in the subscribe ext, and no other', TEST_TIMEOUT, async () => {
      const alice = client();
      await alice.login(await mint('alice'));
      const token = await mint('alice', { claims: { channel: '/private/room1' } });
      const without = await alice.subscribe('/private/room1');
      assert.equal(without.reply.successful, false);
      assert.match(String(without.reply.error), /^403:\/private\/room1:/);
      const other = await alice.subscribe('/private/room2', { token });
      assert.equal(other.reply.successful, false);
      const { reply, messages } = await alice.subscribe('/private/room1', { token });
      assert.equal(reply.successful, true, JSON.stringify(reply));
      await ts.server.publish('/private/room2', 'not for alice');
      await ts.server.publish('/private/room1', 'for alice');
      await waitFor(() => messages.length === 1, 5000, 'the private message');
      assert.equal(messages[0]?.data, 'for alice');
      assert.equal(alice.received.some((m) => m.data === 'not for alice'), false);
    });

    it('when the token expires the connect fails with 403 and advice to handshake; a fresh token starts a new session', TEST_TIMEOUT, async () => {
      const c = client();
      const tokens = [await shortLived('alice'), await mint('alice')];
      let issued = 0;
      c.tokenSource = () => tokens[Math.min(issued++, tokens.length - 1)]!;
      const first = await c.handshake();
      assert.equal(first.successful, true, JSON.stringify(first));
      const oldId = c.clientId;
      await onTransport(ts, oldId, transport);
      await waitFor(() => c.received.some((m) => m.channel === '/meta/connect' && m.successful === false), 4000, 'the failed connect');
      const failed = c.received.find((m) => m.channel === '/meta/connect' && m.successful === false)!;
      assert.match(String(failed.error), /^403::Unauthorized: session ended: token expired$/);
      assert.equal(failed.advice?.reconnect, 'handshake');
      assert.equal(reasons.get(oldId), 'token-expired');
      await waitFor(() => c.cometd.getClientId() !== oldId && c.cometd.getStatus() === 'connected', 5000, 'the new session');
      const fresh = ts.server.getSession(c.clientId);
      assert.equal(fresh?.identity?.id, 'alice');
      assert.ok((fresh?.identity?.expiresAt ?? 0) > Date.now() + 60_000, 'the new session has the fresh token');
      assert.equal(handshakes.at(-1)?.token, tokens[1]);
      const { reply, messages } = await c.subscribe('/chat/after');
      assert.equal(reply.successful, true);
      await ts.server.publish('/chat/after', 'still here');
      await waitFor(() => messages.length === 1, 5000, 'a message on the new session');
    });
  });
}

// ================================================================================== Faye

/** A Faye client whose extension adds its token to /meta/handshake (and subscription tokens to /meta/subscribe). */
class FayeClient {
  readonly client: faye.Client;
  readonly received: faye.Message[] = [];
  readonly subscriptionTokens = new Map<string, string>();
  private id: string | null = null;

  constructor(url: string, transport: TransportName, public token: string | undefined, retrySeconds = 1) {
    this.client = new faye.Client(url, { retry: retrySeconds });
    if (transport === 'long-polling') this.client.disable('websocket');
    this.client.addExtension({
      outgoing: (message, next) => {
        if (message.channel === '/meta/handshake' && this.token !== undefined) message.ext = { ...message.ext, token: this.token };
        const granted = message.channel === '/meta/subscribe' && typeof message.subscription === 'string' ? this.subscriptionTokens.get(message.subscription) : undefined;
        if (granted !== undefined) message.ext = { ...message.ext, token: granted };
        next(message);
      },
      incoming: (message, next) => {
        if (message.channel === '/meta/handshake' && message.successful === true && typeof message.clientId === 'string') this.id = message.clientId;
        this.received.push(message);
        next(message);
      },
    });
  }

  get clientId(): string {
    assert.ok(this.id, 'the client has handshaken');
    return this.id;
  }

  connect(): Promise<void> {
    return new Promise((resolve) => this.client.connect(resolve));
  }

  async subscribe(channel: string): Promise<{ subscription: faye.Subscription; messages: unknown[] }> {
    const messages: unknown[] = [];
    const subscription = this.client.subscribe(channel, (data) => messages.push(data));
    await subscription;
    return { subscription, messages };
  }

  /** The server's reply to the latest message on `channel` (meta or publish). */
  lastReply(channel: string): faye.Message | undefined {
    return this.received.filter((m) => m.channel === channel && m.successful !== undefined).at(-1);
  }

  /**
   * Disconnects, and in any case stops the client: a test that failed halfway can leave it
   * handshaking or retrying, and Faye has no public way to abort that, so its state is set by
   * hand (no retries, transport closed, request timers cleared) to let the process exit.
   */
  async disconnect(): Promise<void> {
    try {
      await Promise.race([Promise.resolve(this.client.disconnect()), sleep(2000)]);
    } catch {
      // The session may be gone already (402); the client is stopped below either way.
    }
    const internal = this.client as unknown as {
      _state: number;
      _advice: { reconnect: string };
      _dispatcher: { close(): void; _envelopes?: { forEach(fn: (envelope: { timer?: unknown }) => void): void } };
    };
    internal._advice.reconnect = 'none';
    internal._state = 4; // DISCONNECTED
    internal._dispatcher._envelopes?.forEach((envelope) => clearTimeout(envelope.timer as NodeJS.Timeout));
    internal._dispatcher.close();
  }
}

for (const transport of TRANSPORTS) {
  describe(`security with the Faye client over ${transport}`, () => {
    let ts: TestServer;
    let reasons: Map<string, DisconnectReason>;
    let handshakes: { token: unknown }[];
    const clients: FayeClient[] = [];
    const client = (token: string | undefined, retrySeconds?: number): FayeClient => {
      const c = new FayeClient(ts.url, transport, token, retrySeconds);
      clients.push(c);
      return c;
    };

    before(async () => {
      ts = await startServer(OPTIONS);
      reasons = recordDisconnects(ts);
      handshakes = recordHandshakes(ts);
    });
    afterEach(async () => {
      await Promise.all(clients.splice(0).map((c) => c.disconnect()));
    });
    after(() => ts.close());

    it('authenticates with ext.token added by an extension, and the channel rules apply to what it does', TEST_TIMEOUT, async () => {
      const writer = client(await mint('alice', { roles: ['writer'] }));
      const reader = client(await mint('bob'));
      await Promise.all([writer.connect(), reader.connect()]);
      await onTransport(ts, writer.clientId, transport);
      await onTransport(ts, reader.clientId, transport);
      assert.equal(writer.received.find((m) => m.channel === '/meta/handshake')?.authSuccessful, true);
      assert.equal(ts.server.getSession(writer.clientId)?.identity?.id, 'alice');
      assert.equal(ts.server.getSession(reader.clientId)?.identity?.id, 'bob');
      const { messages } = await reader.subscribe('/chat/room');
      await assert.rejects(async () => reader.client.publish('/chat/room', 'from the reader'));
      assert.match(String(reader.lastReply('/chat/room')?.error), /^403:\/chat\/room:Forbidden channel: publish denied by rule \/chat\/\*\*$/);
      await writer.client.publish('/chat/room', 'hello');
      await writer.client.publish('/chat/room', 'control');
      await waitFor(() => messages.length === 2, 5000, 'the writer’s messages');
      assert.deepEqual(messages, ['hello', 'control']);
    });

    it('is refused with 403 and advice reconnect none when the token is invalid, and does not retry', TEST_TIMEOUT, async () => {
      const forged = await mint('alice', { secret: 'another-secret-that-is-long-enough-0000' });
      const c = client(forged, 0.1);
      const sessions = ts.server.sessionCount;
      c.client.connect();
      await waitFor(() => c.received.some((m) => m.channel === '/meta/handshake'), 3000, 'the handshake reply');
      const reply = c.received.find((m) => m.channel === '/meta/handshake')!;
      assert.equal(reply.successful, false);
      assert.match(String(reply.error), /^403::Unauthorized: invalid token$/);
      assert.equal(reply.advice?.reconnect, 'none');
      // Faye would retry after `retry` (0.1 s) unless the advice stopped it.
      await sleep(500);
      assert.equal(handshakes.filter((h) => h.token === forged).length, 1, 'the client handshook again');
      assert.equal(ts.server.sessionCount, sessions);
    });

    it('opens a private channel with a subscription token added to /meta/subscribe', TEST_TIMEOUT, async () => {
      const alice = client(await mint('alice'));
      await alice.connect();
      alice.subscriptionTokens.set('/private/room1', await mint('alice', { claims: { channel: '/private/room1' } }));
      const { messages } = await alice.subscribe('/private/room1');
      await assert.rejects(async () => alice.subscribe('/private/room2'));
      assert.match(String(alice.lastReply('/meta/subscribe')?.error), /^403:\/private\/room2:/);
      await ts.server.publish('/private/room2', 'not for alice');
      await ts.server.publish('/private/room1', 'for alice');
      await waitFor(() => messages.length === 1, 5000, 'the private message');
      assert.deepEqual(messages, ['for alice']);
    });

    it('when the token expires the client re-handshakes with a fresh token, resubscribes and keeps receiving', TEST_TIMEOUT, async () => {
      const c = client(await shortLived('bob'));
      await c.connect();
      const oldId = c.clientId;
      await onTransport(ts, oldId, transport);
      const { messages } = await c.subscribe('/chat/room');
      await ts.server.publish('/chat/room', 'before');
      await waitFor(() => messages.length === 1, 5000, 'the first message');
      // The application's token source has a fresh token by the time the old one expires.
      const fresh = await mint('bob');
      c.token = fresh;
      await waitFor(() => c.received.some((m) => m.channel === '/meta/connect' && m.successful === false), 4000, 'the failed connect');
      const failed = c.received.find((m) => m.channel === '/meta/connect' && m.successful === false)!;
      assert.match(String(failed.error), /^403::Unauthorized: session ended: token expired$/);
      assert.equal(failed.advice?.reconnect, 'handshake');
      assert.equal(reasons.get(oldId), 'token-expired');
      await waitFor(() => c.clientId !== oldId, 5000, 'the new handshake');
      assert.equal(handshakes.at(-1)?.token, fresh);
      await waitFor(() => ts.server.getSession(c.clientId)?.subscriptions.has('/chat/room') === true, 5000, 'the client to resubscribe');
      await ts.server.publish('/chat/room', 'after');
      await waitFor(() => messages.length === 2, 5000, 'the message after the new handshake');
      assert.deepEqual(messages, ['before', 'after']);
    });
  });
}
