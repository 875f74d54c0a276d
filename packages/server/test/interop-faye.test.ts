/**
 * Interoperability: the real Faye client (npm `faye` 1.4.3) against a real Perihelion server on
 * loopback, over WebSocket and over long-polling; then Faye and CometD clients talking to each
 * other through the server.
 *
 * Faye on Node always handshakes over HTTP, then moves to the first transport in its own order
 * (in-process, websocket, long-polling) that the server offers and that is usable. So a Faye
 * client is on WebSocket by default, and `disable('websocket')` keeps it on long-polling.
 * Disabling long-polling instead would leave it no transport to handshake with.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import faye from 'faye';
import { adapt } from 'cometd-nodejs-client';
import { CometD, type Message as CometDMessage } from 'cometd';
import type { Extension, Message } from '../src/index.js';
import { post, serverWithItsWebsocketTaken, sessionRecord, startServer, serverBehindSwallowingProxy, waitFor, type TestServer } from './helpers.js';

adapt();

type TransportName = 'websocket' | 'long-polling';
const TRANSPORTS: readonly TransportName[] = ['websocket', 'long-polling'];
const TEST_TIMEOUT = { timeout: 15_000 };

interface Arrival {
  channel: string;
  clientId: string | undefined;
  id: unknown;
  transport: string | undefined;
  /** The same object for every message of one HTTP request or one WebSocket frame. */
  request: object | null;
}

/** A reply the server sent, with the request (or frame) it answers. */
interface Answer {
  channel: string;
  id: unknown;
  request: object | null;
}

/**
 * Records every message arriving at the server and every reply leaving it, so a test can tell
 * which transport carried a message and which messages shared one request and its response.
 */
function watchTraffic(server: TestServer['server']): { arrivals: Arrival[]; answers: Answer[]; stop: () => void } {
  const arrivals: Arrival[] = [];
  const answers: Answer[] = [];
  const extension: Extension = {
    incoming(message: Message, context) {
      arrivals.push({
        channel: message.channel,
        clientId: message.clientId,
        id: message.id,
        transport: context.transport?.transport,
        request: context.transport,
      });
      return message;
    },
    outgoing(message: Message, context) {
      if (context.transport) answers.push({ channel: message.channel, id: message.id, request: context.transport });
      return message;
    },
  };
  return { arrivals, answers, stop: server.addExtension(extension) };
}

interface Delivery {
  channel: string;
  data: unknown;
}

/** A Faye client with promise helpers and a record of every event that reached it on the wire. */
class FayeClient {
  readonly client: faye.Client;
  /** Every non-meta message carrying data, in arrival order, before local listener fan-out. */
  readonly wire: faye.Message[] = [];
  private id: string | null = null;

  constructor(url: string, transport: TransportName) {
    this.client = new faye.Client(url, { retry: 1 });
    if (transport === 'long-polling') this.client.disable('websocket');
    this.client.addExtension({
      incoming: (message, next) => {
        if (message.channel === '/meta/handshake' && message.successful === true && typeof message.clientId === 'string') this.id = message.clientId;
        if (message.data !== undefined && !message.channel.startsWith('/meta/')) this.wire.push(message);
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

  /** Subscribes and resolves once the server acknowledged; `messages` collects what the listener gets. */
  async subscribe(channel: string): Promise<{ subscription: faye.Subscription; messages: Delivery[] }> {
    const messages: Delivery[] = [];
    const subscription = this.client.subscribe(channel).withChannel((ch, data) => messages.push({ channel: ch, data }));
    await subscription;
    return { subscription, messages };
  }

  async publish(channel: string, data: unknown): Promise<void> {
    await this.client.publish(channel, data);
  }

  async disconnect(): Promise<void> {
    await this.client.disconnect();
  }

  wireData(channel: string): unknown[] {
    return this.wire.filter((m) => m.channel === channel).map((m) => m.data);
  }
}

/** The CometD side of the mixed tests: handshake, subscribe, publish, disconnect. */
class CometDClient {
  readonly cometd = new CometD();

  constructor(url: string, transport: TransportName) {
    if (transport === 'long-polling') this.cometd.unregisterTransport('websocket');
    this.cometd.configure({ url, logLevel: 'warn' });
  }

  handshake(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.cometd.handshake((reply) => (reply.successful ? resolve() : reject(new Error(`handshake failed: ${JSON.stringify(reply)}`))));
    });
  }

  subscribe(channel: string): Promise<CometDMessage[]> {
    const messages: CometDMessage[] = [];
    return new Promise((resolve, reject) => {
      this.cometd.subscribe(
        channel,
        (message) => messages.push(message),
        (reply) => (reply.successful ? resolve(messages) : reject(new Error(`subscribe failed: ${JSON.stringify(reply)}`))),
      );
    });
  }

  publish(channel: string, data: unknown): Promise<void> {
    return new Promise((resolve, reject) => {
      this.cometd.publish(channel, data, (reply) => (reply.successful ? resolve() : reject(new Error(`publish failed: ${JSON.stringify(reply)}`))));
    });
  }

  disconnect(): Promise<void> {
    return new Promise((resolve) => {
      if (this.cometd.isDisconnected()) resolve();
      else this.cometd.disconnect(() => resolve());
    });
  }
}

const UNICODE_AND_NESTED = {
  emoji: '😀 🚀 👍🏽 👨‍👩‍👧‍👦 🇯🇵',
  cjk: '漢字 かな カナ 한국어 中文',
  rtl: 'עברית العربية ‏mixed‎',
  separators: 'line\u2028paragraph\u2029end',
  escapes: '"quote" \\back\\ /slash/ \b\f\n\r\t \u0000\u001f',
  nested: {
    list: [1, -2.5, 3e-7, 1e21, 0, true, false, null, '', [], {}],
    deep: { a: { b: { c: { d: { e: ['bottom', { f: 'ü' }] } } } } },
    'key with spaces and ünïcödé 🔑': 'value',
  },
};

/** A 256 KiB string whose every position matters: any lost, duplicated or moved chunk changes it. */
function bigPayload(): string {
  const size = 256 * 1024;
  let out = '';
  for (let i = 0; out.length < size; i++) out += `${i.toString(36)}:${String.fromCharCode(33 + ((i * 7919) % 94))};`;
  return out.slice(0, size);
}

/** Resolves once the session's latest /meta/connect came over `transport` (Faye switches after its handshake). */
async function onTransport(test: TestServer, clientId: string, transport: TransportName): Promise<void> {
  const settled = (): boolean => {
    const session = sessionRecord(test.server, clientId);
    if (session?.connectionType !== transport) return false;
    return transport === 'websocket' ? session.connection?.open === true : session.connection === null;
  };
  try {
    await waitFor(settled, 7000, `the session to connect over ${transport}`);
  } catch (error) {
    // Say what the session did instead, so that a rare failure can be told apart from a slow machine.
    const session = sessionRecord(test.server, clientId);
    const seen = session ? `connectionType ${session.connectionType}, push line ${session.connection ? (session.connection.open ? 'open' : 'closed') : 'none'}` : 'the session is gone';
    throw new Error(`${(error as Error).message} (${seen}; ${test.server.sessionCount} sessions)`);
  }
}

for (const transport of TRANSPORTS) {
  describe(`Faye client over ${transport}`, () => {
    let test: TestServer;
    let watch: ReturnType<typeof watchTraffic>;
    const clients: FayeClient[] = [];
    let channelSeq = 0;
    const fresh = (name: string): string => `/faye-${transport}/${name}${++channelSeq}`;

    /** A connected Faye client already moved to the transport under test. */
    async function connect(): Promise<FayeClient> {
      const client = new FayeClient(test.url, transport);
      clients.push(client);
      await client.connect();
      await onTransport(test, client.clientId, transport);
      return client;
    }

    before(async () => {
      // Faye sends its first connects over long-polling while its WebSocket opens, and moves
      // them over only when the held one returns (unless it speaks over the socket first): on a
      // busy machine that is the whole connect timeout. A short one keeps the move quick.
      test = await startServer({ timeout: 3000 });
      watch = watchTraffic(test.server);
    });

    afterEach(async () => {
      await Promise.all(clients.splice(0).map((c) => c.disconnect()));
    });

    after(async () => {
      watch.stop();
      await test.close();
    });

    it(`handshakes over HTTP, then connects over ${transport}`, TEST_TIMEOUT, async () => {
      const client = await connect();
      const id = client.clientId;
      const fromClient = watch.arrivals.filter((a) => a.clientId === id);
      const handshake = watch.arrivals.filter((a) => a.channel === '/meta/handshake').at(-1);
      assert.equal(handshake?.transport, 'long-polling', 'Faye handshakes over HTTP');
      const connects = fromClient.filter((a) => a.channel === '/meta/connect');
      assert.equal(connects.at(-1)?.transport, transport);
      if (transport === 'long-polling') {
        assert.deepEqual(new Set(fromClient.map((a) => a.transport)), new Set(['long-polling']), 'nothing came over a WebSocket');
      }
      assert.ok((test.server.stats().sessionsByTransport[transport] ?? 0) >= 1);
      // A publish made now also travels over the transport under test.
      const channel = fresh('probe');
      await client.publish(channel, { probe: true });
      assert.equal(watch.arrivals.find((a) => a.channel === channel)?.transport, transport);
    });

    it('delivers a published message to a subscriber, without leaking the clientId', TEST_TIMEOUT, async () => {
      const client = await connect();
      const channel = fresh('echo');
      const { messages } = await client.subscribe(channel);
      await client.publish(channel, { hello: 'world' });
      await waitFor(() => messages.length === 1, 5000, 'the message');
      assert.deepEqual(messages[0], { channel, data: { hello: 'world' } });
      assert.equal(client.wire.length > 0 && client.wire.every((m) => m.clientId === undefined), true, 'delivered messages carry no clientId');
      assert.equal(watch.arrivals.find((a) => a.channel === channel)?.transport, transport);
    });

    it('delivers messages from one Faye client to another', TEST_TIMEOUT, async () => {
      const [alice, bob] = await Promise.all([connect(), connect()]);
      const channel = fresh('chat');
      const { messages } = await bob.subscribe(channel);
      await alice.publish(channel, { from: 'alice' });
      await waitFor(() => messages.length === 1, 5000, 'alice → bob');
      assert.deepEqual(messages[0]?.data, { from: 'alice' });
    });

    it('a /x/* subscription matches exactly one more segment', TEST_TIMEOUT, async () => {
      const client = await connect();
      const base = fresh('one');
      const { messages } = await client.subscribe(`${base}/*`);
      for (const channel of [base, `${base}x`, `${base}/a/b`, `${base}/a`, `${base}/b/c/d`, `${base}/end`]) {
        await client.publish(channel, { channel });
      }
      await waitFor(() => messages.some((m) => m.channel === `${base}/end`), 5000, 'the last matching message');
      assert.deepEqual(messages.map((m) => m.channel), [`${base}/a`, `${base}/end`]);
      assert.deepEqual(client.wire.filter((m) => m.channel.startsWith(base)).map((m) => m.channel), [`${base}/a`, `${base}/end`], 'the server sent nothing else');
    });

    it('a /x/** subscription matches any depth below it, but not the channel itself', TEST_TIMEOUT, async () => {
      const client = await connect();
      const base = fresh('deep');
      const { messages } = await client.subscribe(`${base}/**`);
      for (const channel of [base, `${base}x/a`, `${base}/a`, `${base}/a/b/c/d`, `${base}/end`]) {
        await client.publish(channel, { channel });
      }
      await waitFor(() => messages.some((m) => m.channel === `${base}/end`), 5000, 'the last matching message');
      const expected = [`${base}/a`, `${base}/a/b/c/d`, `${base}/end`];
      assert.deepEqual(messages.map((m) => m.channel), expected);
      assert.deepEqual(client.wire.filter((m) => m.channel.startsWith(base)).map((m) => m.channel), expected);
    });

    it('sends exactly one copy when several subscriptions of a client match', TEST_TIMEOUT, async () => {
      const client = await connect();
      const base = fresh('dup');
      const star = await client.subscribe(`${base}/*`);
      const globstar = await client.subscribe(`${base}/**`);
      const exact = await client.subscribe(`${base}/x`);
      await client.publish(`${base}/x`, { n: 1 });
      await client.publish(`${base}/end`, { n: 2 });
      await waitFor(() => star.messages.some((m) => m.channel === `${base}/end`), 5000, 'the closing message');
      assert.equal(client.wire.filter((m) => m.channel === `${base}/x`).length, 1, 'one copy on the wire');
      assert.equal(star.messages.filter((m) => m.channel === `${base}/x`).length, 1);
      assert.equal(globstar.messages.filter((m) => m.channel === `${base}/x`).length, 1);
      assert.equal(exact.messages.length, 1);
    });

    it('stops delivering after unsubscribe', TEST_TIMEOUT, async () => {
      const client = await connect();
      const channel = fresh('unsub');
      const control = `${channel}-control`;
      const sub = await client.subscribe(channel);
      const ctl = await client.subscribe(control);
      await client.publish(channel, { n: 1 });
      await waitFor(() => sub.messages.length === 1, 5000, 'the first message');
      const unsubscribed = new Promise<void>((resolve) => {
        const off = test.server.on('unsubscribe', (session, ch) => {
          if (session.id === client.clientId && ch === channel) {
            off();
            resolve();
          }
        });
      });
      sub.subscription.cancel();
      await unsubscribed;
      await client.publish(channel, { n: 2 });
      await client.publish(control, { n: 3 });
      await waitFor(() => ctl.messages.length === 1, 5000, 'the control message');
      assert.deepEqual(client.wireData(channel), [{ n: 1 }], 'nothing on the channel after unsubscribe');
    });

    it('disconnect ends the session: its clientId then gets 402 and advice to handshake', TEST_TIMEOUT, async () => {
      const client = await connect();
      const id = client.clientId;
      await client.disconnect();
      assert.equal(test.server.getSession(id), undefined);
      const { status, body } = await post(test.url, [{ channel: '/meta/connect', clientId: id, connectionType: 'long-polling', id: '9' }]);
      assert.equal(status, 200);
      assert.equal(body.length, 1);
      const refused = body[0]!;
      assert.equal(refused.channel, '/meta/connect');
      assert.equal(refused.successful, false);
      assert.equal(refused.id, '9');
      assert.match(String(refused.error), /^402:/);
      assert.equal((refused.advice as { reconnect?: unknown } | undefined)?.reconnect, 'handshake');
    });

    it('delivers 1 000 messages on one channel complete and in order', TEST_TIMEOUT, async () => {
      const [publisher, subscriber] = await Promise.all([connect(), connect()]);
      const channel = fresh('flood');
      const { messages } = await subscriber.subscribe(channel);
      const acks: Promise<void>[] = [];
      for (let n = 0; n < 1000; n++) acks.push(publisher.publish(channel, { n }));
      await Promise.all(acks);
      await waitFor(() => messages.length >= 1000, 8000, '1 000 messages');
      assert.deepEqual(
        messages.map((m) => (m.data as { n: number }).n),
        Array.from({ length: 1000 }, (_, n) => n),
      );
      assert.equal(subscriber.wire.filter((m) => m.channel === channel).length, 1000, 'no duplicates on the wire');
    });

    it('round-trips unicode (emoji, CJK, RTL, U+2028) and nested JSON exactly', TEST_TIMEOUT, async () => {
      const [publisher, subscriber] = await Promise.all([connect(), connect()]);
      const channel = fresh('unicode');
      const { messages } = await subscriber.subscribe(channel);
      await publisher.publish(channel, UNICODE_AND_NESTED);
      await waitFor(() => messages.length === 1, 5000, 'the message');
      assert.deepStrictEqual(messages[0]?.data, UNICODE_AND_NESTED);
    });

    it('carries a 256 KiB payload intact', TEST_TIMEOUT, async () => {
      const [publisher, subscriber] = await Promise.all([connect(), connect()]);
      const channel = fresh('big');
      const { messages } = await subscriber.subscribe(channel);
      const payload = bigPayload();
      assert.equal(payload.length, 256 * 1024);
      await publisher.publish(channel, { payload });
      await waitFor(() => messages.length === 1, 5000, 'the large message');
      const received = (messages[0]?.data as { payload?: string } | undefined)?.payload;
      assert.equal(received?.length, payload.length);
      assert.ok(received === payload, 'the payload arrived byte for byte');
    });

    if (transport === 'long-polling') {
      it('sends publishes made together in one POST, processed in order and answered together', TEST_TIMEOUT, async () => {
        const [publisher, subscriber] = await Promise.all([connect(), connect()]);
        const channel = fresh('batch');
        const { messages } = await subscriber.subscribe(channel);
        const acked: number[] = [];
        await Promise.all(Array.from({ length: 10 }, (_, n) => publisher.publish(channel, { n }).then(() => acked.push(n))));
        assert.deepEqual(acked, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'acknowledged in order');
        const arrived = watch.arrivals.filter((a) => a.channel === channel && a.clientId === publisher.clientId);
        assert.equal(arrived.length, 10);
        const request = arrived[0]?.request;
        assert.ok(arrived.every((a) => a.request === request), 'all ten publishes came in one POST');
        const answered = watch.answers.filter((a) => a.channel === channel);
        assert.deepEqual(answered.map((a) => a.id), arrived.map((a) => a.id), 'one reply per publish, in order');
        assert.ok(answered.every((a) => a.request === request), 'all ten replies went back in that POST’s response');
        await waitFor(() => messages.length === 10, 5000, 'the batched messages');
        assert.deepEqual(messages.map((m) => (m.data as { n: number }).n), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      });
    }

    it('delivers server.publish() to a subscribed client', TEST_TIMEOUT, async () => {
      const client = await connect();
      const channel = fresh('server');
      const { messages } = await client.subscribe(channel);
      await test.server.publish(channel, { from: 'server', unicode: '😀' });
      await waitFor(() => messages.length === 1, 5000, 'the server publish');
      assert.deepStrictEqual(messages[0], { channel, data: { from: 'server', unicode: '😀' } });
    });
  });
}

describe('CometD and Faye clients on one server', () => {
  let test: TestServer;
  const closers: (() => Promise<void>)[] = [];
  let channelSeq = 0;
  const fresh = (name: string): string => `/mixed/${name}${++channelSeq}`;

  async function cometdClient(transport: TransportName): Promise<CometDClient> {
    const client = new CometDClient(test.url, transport);
    closers.push(() => client.disconnect());
    await client.handshake();
    assert.equal(client.cometd.getTransport()?.type, transport);
    return client;
  }

  async function fayeClient(transport: TransportName): Promise<FayeClient> {
    const client = new FayeClient(test.url, transport);
    closers.push(() => client.disconnect());
    await client.connect();
    await onTransport(test, client.clientId, transport);
    return client;
  }

  before(async () => {
    // A short connect timeout, for the reason given in the Faye suite above.
    test = await startServer({ timeout: 3000 });
  });

  afterEach(async () => {
    await Promise.all(closers.splice(0).map((close) => close()));
  });

  after(async () => {
    await test.close();
  });

  for (const cometdTransport of TRANSPORTS) {
    for (const fayeTransport of TRANSPORTS) {
      const pair = `CometD (${cometdTransport}) and Faye (${fayeTransport})`;

      it(`a message published by CometD (${cometdTransport}) reaches Faye (${fayeTransport})`, TEST_TIMEOUT, async () => {
        const [cometd, fayeSide] = await Promise.all([cometdClient(cometdTransport), fayeClient(fayeTransport)]);
        const channel = fresh('c2f');
        const { messages } = await fayeSide.subscribe(channel);
        await cometd.publish(channel, UNICODE_AND_NESTED);
        await waitFor(() => messages.length === 1, 5000, 'the message at Faye');
        assert.deepStrictEqual(messages[0], { channel, data: UNICODE_AND_NESTED });
      });

      it(`a message published by Faye (${fayeTransport}) reaches CometD (${cometdTransport})`, TEST_TIMEOUT, async () => {
        const [cometd, fayeSide] = await Promise.all([cometdClient(cometdTransport), fayeClient(fayeTransport)]);
        const channel = fresh('f2c');
        const messages = await cometd.subscribe(channel);
        await fayeSide.publish(channel, UNICODE_AND_NESTED);
        await waitFor(() => messages.length === 1, 5000, 'the message at CometD');
        assert.equal(messages[0]?.channel, channel);
        assert.deepStrictEqual(messages[0]?.data, UNICODE_AND_NESTED);
      });

      it(`server.publish() reaches both ${pair}`, TEST_TIMEOUT, async () => {
        const [cometd, fayeSide] = await Promise.all([cometdClient(cometdTransport), fayeClient(fayeTransport)]);
        const channel = fresh('srv');
        const atCometD = await cometd.subscribe(channel);
        const atFaye = (await fayeSide.subscribe(channel)).messages;
        await test.server.publish(channel, { from: 'server', n: 1 });
        await waitFor(() => atCometD.length === 1 && atFaye.length === 1, 5000, 'the message at both clients');
        assert.deepStrictEqual(atCometD[0]?.data, { from: 'server', n: 1 });
        assert.deepStrictEqual(atFaye[0], { channel, data: { from: 'server', n: 1 } });
      });
    }
  }
});

describe('Faye client refused a WebSocket (maxWebsocketsPerIp), in its plain setup', () => {
  let test: TestServer;
  let release: () => Promise<void>;
  let client: FayeClient | undefined;

  before(async () => {
    ({ test, release } = await serverWithItsWebsocketTaken());
  });

  after(async () => {
    await client?.disconnect();
    await release();
  });

  it('falls back to long-polling and is served: subscribes, publishes, receives', { timeout: 10_000 }, async () => {
    const traffic = watchTraffic(test.server);
    client = new FayeClient(test.url, 'websocket');
    const { messages } = await client.subscribe('/refused/ws');
    await client.publish('/refused/ws', { n: 1 });
    await test.server.publish('/refused/ws', { n: 2 });
    await waitFor(() => messages.length === 2, 5000, 'both messages');
    assert.deepEqual(messages.map((m) => m.data), [{ n: 1 }, { n: 2 }]);
    assert.ok(test.server.stats().websocketsRefused >= 1, 'the WebSocket was refused');
    const own = traffic.arrivals.filter((a) => a.clientId === client!.clientId);
    assert.ok(own.length > 0 && own.every((a) => a.transport !== 'websocket'), `nothing came over a WebSocket: ${JSON.stringify(own.map((a) => a.transport))}`);
    traffic.stop();
  });
});

describe('Faye client behind a proxy that swallows WebSocket upgrades, in its plain setup', () => {
  let setup: Awaited<ReturnType<typeof serverBehindSwallowingProxy>>;
  let client: FayeClient | undefined;

  before(async () => {
    setup = await serverBehindSwallowingProxy();
  });

  after(async () => {
    await client?.disconnect();
    await setup.close();
  });

  // Faye handshakes over HTTP and tries its WebSocket beside it: a socket that never opens costs nothing.
  it('is served over long-polling at once, every message delivered', { timeout: 10_000 }, async () => {
    const { test, proxy } = setup;
    client = new FayeClient(proxy.url, 'websocket');
    const started = Date.now();
    const { messages } = await client.subscribe('/swallowed/ws');
    assert.ok(Date.now() - started < 1000, `subscribed in ${Date.now() - started} ms`);
    await test.server.publish('/swallowed/ws', { n: 1 });
    await waitFor(() => messages.length === 1, 5000, 'the message');
    assert.ok(proxy.swallowed() >= 1, 'the WebSocket was tried, and swallowed');
    assert.equal(test.server.getSession(client.clientId)?.connectionType, 'long-polling');
  });
});
