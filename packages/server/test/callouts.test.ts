/**
 * Calls out to the application: allow/deny call-outs before handshakes, subscribes and publishes
 * (answers, refusals through long-polling and WebSocket, data and ext rewrites, the channel
 * filter, every kind of failure under both failure policies, the request the application gets,
 * option validation) and webhooks (events in order per session, a slow or dead endpoint that
 * never delays a client, the bounds on requests in flight and on the backlog).
 *
 * A real node:http server on loopback plays the application.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CalloutError, PerihelionError, WebhookError, createServer, type CalloutRule, type ServerOptions, type Webhook } from '../src/index.js';
import { WsPeer, handshake, post, startServer, waitFor, type Msg, type TestServer } from './helpers.js';


const HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling', 'websocket'] };
const SECRET = 'app-shared-secret-0123456789';

// ------------------------------------------------------------------------------------ the application

interface Received {
  body: Msg;
  headers: IncomingHttpHeaders;
  method: string;
  at: number;
}

type Handler = (body: Msg, res: ServerResponse, req: IncomingMessage) => unknown;

function json(res: ServerResponse, value: unknown, status = 200): void {
  res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(value));
}

/** A local HTTP server standing in for the PHP/Django/Rails application. */
class App {
  readonly received: Received[] = [];
  /** Requests whose answer has not been sent yet. */
  private readonly open = new Set<ServerResponse>();
  maxPending = 0;
  handler: Handler = (_body, res) => json(res, { allow: true });

  private constructor(readonly server: Server, readonly url: string) {}

  static async start(): Promise<App> {
    const server = createHttpServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const app = new App(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}/perihelion`);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Msg;
        app.received.push({ body, headers: req.headers, method: req.method ?? '', at: Date.now() });
        app.open.add(res);
        app.maxPending = Math.max(app.maxPending, app.pending);
        res.on('close', () => app.open.delete(res));
        void Promise.resolve(app.handler(body, res, req)).catch(() => res.destroy());
      });
    });
    return app;
  }

  get pending(): number {
    return this.open.size;
  }

  bodies(operation?: string): Msg[] {
    return this.received.map((r) => r.body).filter((b) => operation === undefined || b.operation === operation);
  }

  /** Forgets what was received and drops the requests still waiting for an answer. */
  reset(): void {
    for (const res of this.open) res.destroy();
    this.open.clear();
    this.received.length = 0;
    this.maxPending = 0;
    this.handler = (_body, res) => json(res, { allow: true });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A URL on which nothing listens (connection refused). */
async function deadUrl(): Promise<string> {
  const server = createHttpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}/down`;
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------------------------ clients

function at(body: Msg[], index: number): Msg {
  const message = body[index];
  assert.ok(message, `reply ${index} missing from ${JSON.stringify(body)}`);
  return message;
}

async function send(url: string, message: Msg): Promise<Msg> {
  return at((await post(url, [message])).body, 0);
}

/** Handshake + first connect over long-polling. */
async function connected(url: string, ext?: Msg): Promise<string> {
  const reply = await send(url, { ...HANDSHAKE, ...(ext ? { ext } : {}) });
  assert.equal(reply.successful, true, JSON.stringify(reply));
  const clientId = reply.clientId as string;
  assert.equal((await send(url, { channel: '/meta/connect', clientId, connectionType: 'long-polling' })).successful, true);
  return clientId;
}

/** Messages waiting for a long-polling session (a connect answered at once). */
async function drain(url: string, clientId: string): Promise<Msg[]> {
  const { body } = await post(url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', advice: { timeout: 0 } }]);
  assert.equal(at(body, 0).successful, true);
  return body.slice(1);
}

// ------------------------------------------------------------------------------------ call-outs

describe('call-outs to the application', () => {
  let app: App;
  const servers: TestServer[] = [];
  const peers: WsPeer[] = [];

  const start = async (callouts: CalloutRule[], options: ServerOptions = {}): Promise<TestServer> => {
    const ts = await startServer({ callouts, ...options });
    servers.push(ts);
    return ts;
  };
  const peer = async (ts: TestServer): Promise<WsPeer> => {
    const p = await WsPeer.open(ts.wsUrl);
    peers.push(p);
    return p;
  };
  /** A rule for the test application, with the shared secret. */
  const rule = (extra: Partial<CalloutRule> = {}): CalloutRule => ({ url: app.url, headers: { 'X-Perihelion-Secret': SECRET }, ...extra });

  before(async () => {
    app = await App.start();
  });
  afterEach(async () => {
    for (const p of peers.splice(0)) await p.close();
    for (const ts of servers.splice(0)) await ts.close();
    app.reset();
  });
  after(async () => {
    await app.close();
  });

  it('asks before a handshake, a subscribe and a publish, and lets through what the application allows', async () => {
    const ts = await start([rule()]);
    const clientId = await connected(ts.url);
    assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/chat/room' })).successful, true);
    assert.equal((await send(ts.url, { channel: '/chat/room', clientId, data: { text: 'hi' } })).successful, true);
    const events = await drain(ts.url, clientId);
    assert.deepEqual(events.map((m) => m.data), [{ text: 'hi' }]);
    assert.deepEqual(app.bodies().map((b) => [b.operation, b.channel]), [
      ['handshake', '/meta/handshake'],
      ['subscribe', '/chat/room'],
      ['publish', '/chat/room'],
    ]);
    // Connects are never called out.
    assert.equal(app.bodies().filter((b) => b.channel === '/meta/connect').length, 0);
  });

  it('sends the application the operation, channel, clientId, user, data, ext without the token, the remote address and the secret header', async () => {
    const ts = await start([rule()], {
      authenticate: ({ message }) => (message.ext?.token === 'alice-token' ? { id: 'alice', roles: [], claims: {} } : null),
    });
    const clientId = await connected(ts.url, { token: 'alice-token', device: 'phone' });
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/chat/room', ext: { token: 'subscription-token', note: 1 } });
    await send(ts.url, { channel: '/chat/room', clientId, data: { text: 'hello' }, ext: { token: 'x', trace: 'abc' } });
    await send(ts.url, { channel: '/service/echo', clientId, data: [1, 2] });

    const [hs, sub, pub, service] = app.received;
    assert.ok(hs && sub && pub && service, JSON.stringify(app.bodies()));
    assert.deepEqual(hs.body, { operation: 'handshake', channel: '/meta/handshake', clientId: null, user: null, ext: { device: 'phone' }, remoteAddress: '127.0.0.1' });
    assert.deepEqual(sub.body, { operation: 'subscribe', channel: '/chat/room', clientId, user: 'alice', ext: { note: 1 }, remoteAddress: '127.0.0.1' });
    assert.deepEqual(pub.body, { operation: 'publish', channel: '/chat/room', clientId, user: 'alice', ext: { trace: 'abc' }, remoteAddress: '127.0.0.1', data: { text: 'hello' } });
    assert.deepEqual(service.body, { operation: 'publish', channel: '/service/echo', clientId, user: 'alice', ext: {}, remoteAddress: '127.0.0.1', data: [1, 2] });
    for (const { method, headers } of app.received) {
      assert.equal(method, 'POST');
      assert.equal(headers['x-perihelion-secret'], SECRET);
      assert.equal(headers['content-type'], 'application/json');
    }
    assert.ok(!JSON.stringify(app.bodies()).includes('token'), 'a token reached the application');
  });

  it('refuses what the application refuses, with its reason, over long-polling', async () => {
    const ts = await start([rule()]);
    app.handler = (body, res) => {
      if (body.operation === 'handshake' && (body.ext as Msg).user === 'mallory') return json(res, { allow: false, reason: 'banned' });
      if (body.channel === '/chat/secret') return json(res, { allow: false, reason: 'not a member' });
      json(res, { allow: true });
    };
    const refused = await send(ts.url, { ...HANDSHAKE, ext: { user: 'mallory' }, id: 'h1' });
    assert.equal(refused.successful, false);
    assert.equal(refused.error, '403::Refused by the application: banned');
    assert.deepEqual(refused.advice, { reconnect: 'none' });
    assert.equal(refused.clientId, undefined);
    assert.equal(refused.id, 'h1');

    const clientId = await connected(ts.url);
    const sub = await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: ['/chat/open', '/chat/secret'] });
    assert.equal(sub.successful, false);
    assert.equal(sub.error, '403:/chat/secret:Refused by the application: not a member');
    // The whole message is refused: not even the allowed channel is subscribed.
    assert.deepEqual([...ts.server.getSession(clientId)!.subscriptions], []);

    // A publish refused by the application reaches nobody.
    assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/chat/*' })).successful, true);
    const pub = await send(ts.url, { channel: '/chat/secret', clientId, data: 'leak' });
    assert.equal(pub.successful, false);
    assert.equal(pub.error, '403:/chat/secret:Refused by the application: not a member');
    await send(ts.url, { channel: '/chat/open', clientId, data: 'control' });
    assert.deepEqual((await drain(ts.url, clientId)).map((m) => m.data), ['control']);
  });

  it('refuses what the application refuses, with its reason, over WebSocket', async () => {
    const ts = await start([rule()]);
    app.handler = (body, res) => {
      if (body.operation === 'handshake' && (body.ext as Msg).user === 'mallory') return json(res, { allow: false, reason: 'banned' });
      if (body.channel === '/chat/secret') return json(res, { allow: false, reason: 'not a member' });
      json(res, { allow: true });
    };
    const ws = await peer(ts);
    const refused = await ws.request({ ...HANDSHAKE, supportedConnectionTypes: ['websocket'], ext: { user: 'mallory' } });
    assert.equal(refused.error, '403::Refused by the application: banned');
    assert.deepEqual(refused.advice, { reconnect: 'none' });

    const hs = await ws.request({ ...HANDSHAKE, supportedConnectionTypes: ['websocket'] });
    assert.equal(hs.successful, true);
    const clientId = hs.clientId as string;
    assert.equal((await ws.request({ channel: '/meta/connect', clientId, connectionType: 'websocket' })).successful, true);
    const sub = await ws.request({ channel: '/meta/subscribe', clientId, subscription: '/chat/secret' });
    assert.equal(sub.error, '403:/chat/secret:Refused by the application: not a member');
    assert.equal((await ws.request({ channel: '/meta/subscribe', clientId, subscription: '/chat/**' })).successful, true);
    const pub = await ws.request({ channel: '/chat/secret', clientId, data: 'leak' });
    assert.equal(pub.error, '403:/chat/secret:Refused by the application: not a member');
    assert.equal((await ws.request({ channel: '/chat/open', clientId, data: 'control' })).successful, true);
    await waitFor(() => ws.received.some((m) => m.data === 'control'), 3000, 'the control message');
    assert.ok(!ws.received.some((m) => m.data === 'leak'), 'a refused publish was delivered');
  });

  it('refuses without a reason as "Refused by the application"', async () => {
    const ts = await start([rule({ operations: ['publish'] })]);
    app.handler = (_body, res) => json(res, { allow: false });
    const clientId = await connected(ts.url);
    assert.equal((await send(ts.url, { channel: '/a/b', clientId, data: 1 })).error, '403:/a/b:Refused by the application');
  });

  it('rewrites a publish with the data the application answers, for every subscriber', async () => {
    const ts = await start([rule({ operations: ['publish'] })]);
    app.handler = (body, res) => json(res, { allow: true, data: { text: String((body.data as Msg).text).toUpperCase(), checked: true } });
    const listener = await connected(ts.url);
    await send(ts.url, { channel: '/meta/subscribe', clientId: listener, subscription: '/chat/room' });
    const ws = await peer(ts);
    const hs = await ws.request({ ...HANDSHAKE, supportedConnectionTypes: ['websocket'] });
    const wsClient = hs.clientId as string;
    await ws.request({ channel: '/meta/connect', clientId: wsClient, connectionType: 'websocket' });
    await ws.request({ channel: '/meta/subscribe', clientId: wsClient, subscription: '/chat/*' });

    const publisher = await connected(ts.url);
    assert.equal((await send(ts.url, { channel: '/chat/room', clientId: publisher, data: { text: 'quiet' } })).successful, true);
    assert.deepEqual((await drain(ts.url, listener)).map((m) => m.data), [{ text: 'QUIET', checked: true }]);
    await waitFor(() => ws.received.some((m) => m.channel === '/chat/room'), 3000, 'the publish over WebSocket');
    assert.deepEqual(ws.received.find((m) => m.channel === '/chat/room')!.data, { text: 'QUIET', checked: true });
  });

  it('rewrites the data of a /service request before the listener sees it', async () => {
    const ts = await start([rule({ operations: ['publish'] })]);
    app.handler = (_body, res) => json(res, { allow: true, data: { n: 42 } });
    const seen: unknown[] = [];
    ts.server.subscribe('/service/**', (message) => {
      seen.push(message.data);
      return 'ok';
    });
    const clientId = await connected(ts.url);
    assert.equal((await send(ts.url, { channel: '/service/calc', clientId, data: { n: 1 } })).successful, true);
    assert.deepEqual(seen, [{ n: 42 }]);
  });

  it('adds the ext the application answers to the handshake, where the authenticator sees it', async () => {
    const ts = await start([rule({ operations: ['handshake'] })], {
      anonymous: false,
      authenticate: ({ message }) => {
        const user = message.ext?.appUser;
        return typeof user === 'string' ? { id: user, roles: [], claims: { plan: message.ext?.plan } } : null;
      },
    });
    app.handler = (body, res) => {
      const cookie = (body.ext as Msg).sessionCookie;
      json(res, cookie === 'php-session-1' ? { allow: true, ext: { appUser: 'bob', plan: 'pro' } } : { allow: true });
    };
    const reply = await send(ts.url, { ...HANDSHAKE, ext: { sessionCookie: 'php-session-1' } });
    assert.equal(reply.successful, true, JSON.stringify(reply));
    assert.equal(reply.authSuccessful, true);
    const session = ts.server.getSession(reply.clientId as string)!;
    assert.equal(session.identity?.id, 'bob');
    assert.deepEqual(session.identity?.claims, { plan: 'pro' });
    // Without the application's ext there are no credentials.
    const anonymous = await send(ts.url, { ...HANDSHAKE, ext: { sessionCookie: 'other' } });
    assert.match(String(anonymous.error), /^403::Unauthorized/);
  });

  it('asks only the rules whose channels match, the first matching rule deciding', async () => {
    const other = await App.start();
    try {
      other.handler = (_body, res) => json(res, { allow: false, reason: 'second rule' });
      const ts = await start([
        rule({ operations: ['subscribe', 'publish'], channels: ['/private/**', '/rooms/*'] }),
        { url: other.url, operations: ['publish'], channels: ['/rooms/**'] },
      ]);
      const clientId = await connected(ts.url);
      assert.equal(app.received.length + other.received.length, 0, 'the handshake was asked about');
      // Not matched by any rule: not asked.
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/public/news' })).successful, true);
      assert.equal((await send(ts.url, { channel: '/public/news', clientId, data: 1 })).successful, true);
      assert.equal(app.received.length + other.received.length, 0);
      // Matched by the first rule.
      assert.equal((await send(ts.url, { channel: '/private/a/b', clientId, data: 2 })).successful, true);
      assert.equal((await send(ts.url, { channel: '/rooms/lobby', clientId, data: 3 })).successful, true);
      assert.deepEqual(app.bodies().map((b) => b.channel), ['/private/a/b', '/rooms/lobby']);
      // Only the second rule matches a deeper channel.
      const deep = await send(ts.url, { channel: '/rooms/lobby/sub', clientId, data: 4 });
      assert.equal(deep.error, '403:/rooms/lobby/sub:Refused by the application: second rule');
      assert.deepEqual(other.bodies().map((b) => b.channel), ['/rooms/lobby/sub']);
      // A wildcard subscription reaching into a filtered channel is asked about.
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/**' })).successful, true);
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/private/*' })).successful, true);
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/public/*' })).successful, true);
      assert.deepEqual(app.bodies('subscribe').map((b) => b.channel), ['/**', '/private/*']);
    } finally {
      await other.close();
    }
  });

  it('is asked before the server policy, which still applies to what the application allows', async () => {
    const ts = await start([rule()], { open: false, channels: [{ channel: '/board/**', publish: 'anyone' }] });
    const clientId = await connected(ts.url);
    const refused = await send(ts.url, { channel: '/elsewhere', clientId, data: 1 });
    assert.match(String(refused.error), /^403:\/elsewhere:Forbidden channel/);
    assert.equal((await send(ts.url, { channel: '/board/x', clientId, data: 2 })).successful, true);
    assert.deepEqual(app.bodies('publish').map((b) => b.channel), ['/elsewhere', '/board/x']);
  });

  it('does not ask about what the server refuses anyway, nor about subscriptions that add nothing', async () => {
    const ts = await start([rule()]);
    const clientId = await connected(ts.url);
    app.received.length = 0;
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: ['/ok', '/meta/connect'] });
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/bad//channel' });
    await send(ts.url, { channel: '/meta/subscribe', clientId: 'nobody', subscription: '/ok' });
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/service/x' });
    await send(ts.url, { channel: '/ok', clientId: 'nobody', data: 1 });
    await send(ts.url, { channel: '/ok/*', clientId, data: 1 });
    await send(ts.url, { channel: '/ok', clientId });
    await send(ts.url, { channel: '/meta/unsubscribe', clientId, subscription: '/ok' });
    await send(ts.url, { channel: '/meta/handshake' });
    assert.deepEqual(app.bodies(), []);
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/ok' });
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/ok' });
    assert.equal(app.bodies().length, 1, 'an existing subscription was asked about again');
  });

  describe('failures', () => {
    const handshakeError = '403::Refused by the application: no valid answer from the application';

    async function failingHandshake(callout: CalloutRule): Promise<{ reply: Msg; errors: unknown[]; ms: number }> {
      const ts = await start([callout]);
      const errors: unknown[] = [];
      ts.server.on('error', (error) => errors.push(error));
      const started = Date.now();
      const reply = await send(ts.url, HANDSHAKE);
      return { reply, errors, ms: Date.now() - started };
    }

    it('refuses on timeout with onFailure "deny", without advice to stop, and reports it', async () => {
      app.handler = async (_body, res) => {
        await delay(1000);
        json(res, { allow: true });
      };
      const { reply, errors, ms } = await failingHandshake(rule({ timeout: 150 }));
      assert.equal(reply.successful, false);
      assert.equal(reply.error, handshakeError);
      assert.equal(reply.advice, undefined, 'a failed call-out must not tell the client to stop for good');
      assert.ok(ms >= 140 && ms < 900, `answered after ${ms} ms`);
      assert.equal(errors.length, 1);
      const error = errors[0];
      assert.ok(error instanceof CalloutError);
      assert.match(error.message, /no answer within 150 ms/);
      assert.equal(error.operation, 'handshake');
      assert.equal(error.url, app.url);
    });

    it('lets through on timeout with onFailure "allow", and reports it', async () => {
      app.handler = async (body, res) => {
        await delay(1000);
        json(res, { allow: false, reason: `too late for ${String(body.operation)}` });
      };
      const ts = await start([rule({ timeout: 100, onFailure: 'allow' })]);
      const errors: unknown[] = [];
      ts.server.on('error', (error) => errors.push(error));
      const clientId = await connected(ts.url);
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/x' })).successful, true);
      const started = Date.now();
      assert.equal((await send(ts.url, { channel: '/x', clientId, data: 'kept' })).successful, true);
      assert.ok(Date.now() - started < 900);
      assert.deepEqual((await drain(ts.url, clientId)).map((m) => m.data), ['kept']);
      assert.equal(errors.length, 3);
      assert.ok(errors.every((e) => e instanceof CalloutError));
    });

    it('follows onFailure when the application is down (connection refused)', async () => {
      const url = await deadUrl();
      const denied = await failingHandshake({ url });
      assert.equal(denied.reply.error, handshakeError);
      assert.match(String((denied.errors[0] as Error).message), /request failed/);
      const allowed = await failingHandshake({ url, onFailure: 'allow' });
      assert.equal(allowed.reply.successful, true);
      assert.equal(allowed.errors.length, 1);
    });

    it('treats a status other than 200 as a failure', async () => {
      app.handler = (_body, res) => json(res, { allow: true }, 500);
      const denied = await failingHandshake(rule());
      assert.equal(denied.reply.error, handshakeError);
      assert.match(String((denied.errors[0] as Error).message), /answered HTTP 500/);
      app.handler = (_body, res) => res.writeHead(302, { Location: `${app.url}/elsewhere` }).end();
      const redirected = await failingHandshake(rule());
      assert.equal(redirected.reply.error, handshakeError);
      assert.equal(app.received.length, 2, 'a redirect was followed');
      app.handler = (_body, res) => json(res, { allow: false, reason: 'no' }, 403);
      assert.equal((await failingHandshake(rule({ onFailure: 'allow' }))).reply.successful, true);
    });

    it('treats an answer that is not JSON, or has no boolean "allow", as a failure', async () => {
      for (const answer of ['<html>oops</html>', '', '[true]', '{"allow":"yes"}', '{"allowed":true}', '{"allow":true,"ext":"x"}']) {
        app.handler = (_body, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end(answer);
        const { reply, errors } = await failingHandshake(rule());
        assert.equal(reply.error, handshakeError, `answer ${answer}`);
        assert.ok(errors[0] instanceof CalloutError, `answer ${answer}`);
      }
      app.handler = (_body, res) => res.writeHead(200).end('not json');
      const ts = await start([rule({ operations: ['subscribe'] })]);
      const clientId = await connected(ts.url);
      const sub = await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/x' });
      assert.equal(sub.error, '403:/x:Refused by the application: no valid answer from the application');
    });

    it('keeps serving while a failing application is reported', async () => {
      app.handler = (_body, res) => res.destroy();
      const ts = await start([rule({ operations: ['publish'], onFailure: 'allow' })]);
      const clientId = await connected(ts.url);
      await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/y' });
      for (let i = 0; i < 5; i++) assert.equal((await send(ts.url, { channel: '/y', clientId, data: i })).successful, true);
      assert.deepEqual((await drain(ts.url, clientId)).map((m) => m.data), [0, 1, 2, 3, 4]);
    });
  });

  it('validates the option at start, naming the key', () => {
    const cases: [unknown, RegExp][] = [
      [{ url: 'https://app.example/cb' }, /callouts" must be a list/],
      [[{ url: 'https://app.example/cb', onFailur: 'allow' }], /"callouts\[0\]": unknown key "onFailur"/],
      [['https://app.example/cb'], /"callouts\[0\]" must be an object/],
      [[{}], /"callouts\[0\].url" must be an http/],
      [[{ url: 'ftp://app.example/cb' }], /"callouts\[0\].url" must be an http/],
      [[{ url: 'not a url' }], /"callouts\[0\].url"/],
      [[{ url: 'http://a.example', operations: ['connect'] }], /"callouts\[0\].operations": unknown operation "connect"/],
      [[{ url: 'http://a.example', operations: [] }], /"callouts\[0\].operations" must be a non-empty list/],
      [[{ url: 'http://a.example', channels: ['/a/**/b'] }], /"callouts\[0\].channels"/],
      [[{ url: 'http://a.example', channels: 'a' }], /"callouts\[0\].channels"/],
      [[{ url: 'http://a.example', timeout: 0 }], /"callouts\[0\].timeout" must be an integer from 1 to 60000/],
      [[{ url: 'http://a.example', timeout: 60_001 }], /"callouts\[0\].timeout"/],
      [[{ url: 'http://a.example', timeout: 1.5 }], /"callouts\[0\].timeout"/],
      [[{ url: 'http://a.example', onFailure: 'retry' }], /"callouts\[0\].onFailure" must be "deny" or "allow"/],
      [[{ url: 'http://a.example', headers: { 'X-Secret': 1 } }], /"callouts\[0\].headers"/],
      [[{ url: 'http://a.example', headers: { 'Bad Name': 'x' } }], /"callouts\[0\].headers"/],
      [[{ url: 'http://a.example', headers: { 'X-Secret': 'a\r\nInjected: 1' } }], /"callouts\[0\].headers"/],
      [[{ url: 'http://a.example' }, { url: 'http://b.example', timeout: -1 }], /"callouts\[1\].timeout"/],
    ];
    for (const [callouts, message] of cases) {
      assert.throws(
        () => createServer({ callouts: callouts as CalloutRule[] }),
        (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_OPTION' && message.test(error.message),
        `callouts ${JSON.stringify(callouts)}`,
      );
    }
    const ok = createServer({ callouts: [{ url: 'https://app.example/cb', operations: ['publish'], channels: ['/chat/**', '/a'], timeout: 60_000, onFailure: 'allow', headers: { 'X-Secret': 's' } }] });
    void ok.close();
  });
});

// ------------------------------------------------------------------------------------ webhooks

describe('webhooks', () => {
  let app: App;
  const servers: TestServer[] = [];

  const start = async (webhooks: Webhook[], options: ServerOptions = {}): Promise<TestServer> => {
    const ts = await startServer({ webhooks, ...options });
    servers.push(ts);
    return ts;
  };

  before(async () => {
    app = await App.start();
  });
  afterEach(async () => {
    for (const ts of servers.splice(0)) {
      ts.server.webhooks?.close();
      await ts.close();
    }
    app.reset();
  });
  after(async () => {
    await app.close();
  });

  it('receives handshake, subscribe, unsubscribe and disconnect of a session, in order', async () => {
    const ts = await start([{ url: app.url, headers: { 'X-Perihelion-Secret': SECRET } }], {
      authenticate: () => ({ id: 'carol', roles: [], claims: {} }),
    });
    app.handler = (_body, res) => res.writeHead(204).end();
    const before = Date.now();
    const clientId = await handshake(ts.url);
    await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: ['/a', '/b/*'] });
    await send(ts.url, { channel: '/meta/unsubscribe', clientId, subscription: '/a' });
    await send(ts.url, { channel: '/meta/disconnect', clientId });
    await waitFor(() => app.received.length === 5, 3000, 'five webhook requests');
    const bodies = app.bodies();
    assert.deepEqual(
      bodies.map(({ at: _at, ...rest }) => rest),
      [
        { event: 'handshake', clientId, user: 'carol' },
        { event: 'subscribe', clientId, user: 'carol', channel: '/a' },
        { event: 'subscribe', clientId, user: 'carol', channel: '/b/*' },
        { event: 'unsubscribe', clientId, user: 'carol', channel: '/a' },
        { event: 'disconnect', clientId, user: 'carol', reason: 'client' },
      ],
    );
    for (const body of bodies) {
      assert.equal(typeof body.at, 'string');
      assert.equal(new Date(body.at as string).toISOString(), body.at);
      assert.ok(Date.parse(body.at as string) >= before - 1);
    }
    for (const { headers, method } of app.received) {
      assert.equal(method, 'POST');
      assert.equal(headers['x-perihelion-secret'], SECRET);
      assert.equal(headers['content-type'], 'application/json');
    }
    // A session's events are sent one at a time, so they arrive in order.
    assert.equal(app.maxPending, 1);
    assert.deepEqual(ts.server.webhooks?.stats(), [{ url: app.url, queued: 0, inFlight: 0, sent: 5, failed: 0, dropped: 0 }]);
  });

  it('sends only the events a webhook asks for, and the reason a session ended', async () => {
    const other = await App.start();
    try {
      const ts = await start([
        { url: app.url, events: ['disconnect'] },
        { url: other.url, events: ['handshake'] },
      ]);
      const clientId = await handshake(ts.url);
      await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/a' });
      ts.server.getSession(clientId)!.disconnect();
      await waitFor(() => app.received.length === 1 && other.received.length === 1, 3000, 'one request each');
      await delay(50);
      assert.deepEqual(app.bodies().map((b) => [b.event, b.reason]), [['disconnect', 'server']]);
      assert.deepEqual(other.bodies().map((b) => b.event), ['handshake']);
      assert.equal(app.received.length + other.received.length, 2);
    } finally {
      await other.close();
    }
  });

  it('never delays a handshake while the endpoint hangs, and holds at most 16 requests in flight', async () => {
    app.handler = () => {}; // never answers
    const ts = await start([{ url: app.url, timeout: 60_000 }]);
    const times: number[] = [];
    for (let i = 0; i < 40; i++) {
      const started = Date.now();
      await handshake(ts.url);
      times.push(Date.now() - started);
    }
    await waitFor(() => app.pending === 16, 3000, '16 requests at the endpoint');
    await delay(100);
    assert.equal(app.maxPending, 16);
    const [stats] = ts.server.webhooks!.stats();
    assert.deepEqual({ ...stats, url: undefined }, { url: undefined, queued: 24, inFlight: 16, sent: 0, failed: 0, dropped: 0 });
    times.sort((a, b) => a - b);
    assert.ok(times[times.length - 1]! < 250, `slowest handshake took ${times[times.length - 1]} ms`);
  });

  it('keeps at most 1000 events waiting, dropping and counting the oldest', async () => {
    app.handler = () => {};
    const ts = await start([{ url: app.url, timeout: 60_000 }], { maxSubscriptions: 5000 });
    for (let i = 0; i < 40; i++) await handshake(ts.url);
    await waitFor(() => app.pending === 16, 3000, '16 requests at the endpoint');
    // One session subscribing to 1200 channels: 1200 events at once.
    const clientId = await handshake(ts.url);
    const channels = Array.from({ length: 1200 }, (_, i) => `/many/${i}`);
    const started = Date.now();
    assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: channels })).successful, true);
    assert.ok(Date.now() - started < 1000);
    // 41 handshakes + 1200 subscribes = 1241 events; 16 in flight, 1000 waiting, the rest dropped.
    assert.equal(ts.server.webhooks!.dropped(), 225);
    const [stats] = ts.server.webhooks!.stats();
    assert.equal(stats?.queued, 1000);
    assert.equal(stats?.inFlight, 16);
  });

  it('reports a dead endpoint through the error event, without failing clients', async () => {
    const url = await deadUrl();
    const ts = await start([{ url }]);
    const errors: unknown[] = [];
    ts.server.on('error', (error) => errors.push(error));
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const started = Date.now();
      const clientId = await handshake(ts.url);
      times.push(Date.now() - started);
      assert.equal((await send(ts.url, { channel: '/meta/subscribe', clientId, subscription: '/z' })).successful, true);
    }
    await waitFor(() => ts.server.webhooks!.stats()[0]!.failed === 20, 3000, 'twenty failures');
    assert.ok(Math.max(...times) < 250);
    // Reported, but at most once a second.
    assert.ok(errors.length >= 1 && errors.length <= 2, `${errors.length} reports`);
    assert.ok(errors[0] instanceof WebhookError);
    assert.match((errors[0] as Error).message, /request failed/);
  });

  it('times out a slow endpoint and counts the failure', async () => {
    app.handler = async (_body, res) => {
      await delay(500);
      res.writeHead(204).end();
    };
    const ts = await start([{ url: app.url, timeout: 50, events: ['handshake'] }]);
    const errors: unknown[] = [];
    ts.server.on('error', (error) => errors.push(error));
    await handshake(ts.url);
    await waitFor(() => ts.server.webhooks!.stats()[0]!.failed === 1, 3000, 'a timeout');
    assert.match((errors[0] as Error).message, /no answer within 50 ms/);
  });

  it('validates the option at start, naming the key', () => {
    const cases: [unknown, RegExp][] = [
      [{ url: 'http://a.example' }, /"webhooks" must be a list/],
      [[{ url: 'http://a.example', event: ['handshake'] }], /"webhooks\[0\]": unknown key "event"/],
      [[{ url: 'mailto:x@y' }], /"webhooks\[0\].url"/],
      [[{ url: 'http://a.example', events: ['publish'] }], /"webhooks\[0\].events": unknown event "publish"/],
      [[{ url: 'http://a.example', events: [] }], /"webhooks\[0\].events"/],
      [[{ url: 'http://a.example', timeout: 0 }], /"webhooks\[0\].timeout"/],
      [[{ url: 'http://a.example', headers: [] }], /"webhooks\[0\].headers"/],
    ];
    for (const [webhooks, message] of cases) {
      assert.throws(
        () => createServer({ webhooks: webhooks as Webhook[] }),
        (error: unknown) => error instanceof PerihelionError && error.code === 'ERR_INVALID_OPTION' && message.test(error.message),
        `webhooks ${JSON.stringify(webhooks)}`,
      );
    }
  });
});
