/**
 * At-least-once delivery through the CometD ack extension: the raw protocol, then the real CometD
 * client (with its AckExtension) behind a proxy that loses poll responses in flight.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createTcpServer, connect as tcpConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { adapt } from 'cometd-nodejs-client';
import { AckExtension, CometD, type Message as CometDMessage } from 'cometd';
import { at, handshake, post, startServer, waitFor, WsPeer, type Msg, type TestServer } from './helpers.js';

adapt();

/**
 * A TCP proxy in front of the server that can lose traffic the way a network does: `cut()` kills
 * every line at once; `loseResponseWith(marker)` kills the line that carries the first response
 * holding `marker`, after the server has written it (so the server believes it was delivered).
 */
class LossyProxy {
  private readonly lines = new Set<[Socket, Socket]>();
  private marker: string | null = null;
  lost = 0;

  private constructor(private readonly server: Server) {}

  static async start(target: AddressInfo): Promise<LossyProxy> {
    const server = createTcpServer();
    const proxy = new LossyProxy(server);
    server.on('connection', (client) => {
      const upstream = tcpConnect(target.port, target.address);
      const line: [Socket, Socket] = [client, upstream];
      proxy.lines.add(line);
      const end = (): void => {
        proxy.lines.delete(line);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
      client.on('data', (chunk) => upstream.write(chunk));
      upstream.on('data', (chunk: Buffer) => {
        if (proxy.marker !== null && chunk.includes(proxy.marker)) {
          proxy.marker = null;
          proxy.lost++;
          end();
          return;
        }
        client.write(chunk);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  loseResponseWith(marker: string): void {
    this.marker = marker;
  }

  cut(): void {
    for (const [client, upstream] of [...this.lines]) {
      client.destroy();
      upstream.destroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe('ack extension, raw protocol', () => {
  let t: TestServer;
  before(async () => {
    t = await startServer();
  });
  after(() => t.close());

  it('announces itself in the handshake, numbers connect replies, and resends a batch the client did not acknowledge', async () => {
    const { body: hs } = await post(t.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], ext: { ack: true } }]);
    assert.deepEqual(at(hs, 0).ext, { ack: { enabled: true, batch: 0 } });
    const clientId = at(hs, 0).clientId as string;
    const first = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ext: { ack: 0 } }, { channel: '/meta/subscribe', clientId, subscription: '/acked' }]);
    const batch1 = (at(first.body, 0).ext as { ack: number }).ack;
    await t.server.publish('/acked', 'one');
    const delivered = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ext: { ack: batch1 } }]);
    const batch2 = (at(delivered.body, 0).ext as { ack: number }).ack;
    assert.equal(batch2, batch1 + 1);
    assert.deepEqual(delivered.body.slice(1).map((m) => m.data), ['one']);
    // That response is "lost": the next connect still acknowledges batch1 only.
    const again = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ext: { ack: batch1 } }]);
    assert.deepEqual(again.body.slice(1).map((m) => m.data), ['one'], 'the unacknowledged message is written again');
    const batch3 = (at(again.body, 0).ext as { ack: number }).ack;
    assert.equal(batch3, batch2 + 1);
    assert.equal(t.server.stats().resent, 1);
    // Acknowledged now: nothing comes back.
    await t.server.publish('/acked', 'two');
    const next = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ext: { ack: batch3 } }]);
    assert.deepEqual(next.body.slice(1).map((m) => m.data), ['two']);
  });

  it('on a WebSocket, sends an acknowledged session its messages only in connect replies, each reply closing the batch it carries', async () => {
    const ws = await WsPeer.open(t.url.replace(/^http/, 'ws'));
    const plain = await WsPeer.open(t.url.replace(/^http/, 'ws'));
    try {
      const hs = await ws.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'], ext: { ack: true } });
      const clientId = hs.clientId as string;
      const plainId = (await plain.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] })).clientId as string;
      const first = await ws.request({ channel: '/meta/connect', clientId, connectionType: 'websocket', ext: { ack: 0 } });
      await ws.request({ channel: '/meta/subscribe', clientId, subscription: '/acked/ws' });
      await plain.request({ channel: '/meta/connect', clientId: plainId, connectionType: 'websocket' });
      await plain.request({ channel: '/meta/subscribe', clientId: plainId, subscription: '/acked/ws' });
      // Both connects held now; a publish releases the acknowledged one, and is pushed to the other.
      ws.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', ext: { ack: (first.ext as { ack: number }).ack }, id: 'held' }]);
      plain.send([{ channel: '/meta/connect', clientId: plainId, connectionType: 'websocket', id: 'held' }]);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await t.server.publish('/acked/ws', 'in the reply');
      await plain.next((m) => m.data === 'in the reply', 'the message pushed to the plain session');
      await ws.next((m) => m.data === 'in the reply', 'the message in the connect reply');
      const frame = ws.frames.find((f) => Array.isArray(f) && (f as Msg[]).some((m) => m.data === 'in the reply')) as Msg[];
      assert.deepEqual(
        frame.map((m) => m.channel),
        ['/meta/connect', '/acked/ws'],
        'one frame: the reply that closes the batch, and the batch',
      );
      assert.equal((frame[0]!.ext as { ack: number }).ack, (first.ext as { ack: number }).ack + 1);
      assert.ok(!plain.received.some((m) => m.id === 'held'), "the plain session's connect is still held");
    } finally {
      await ws.close();
      await plain.close();
    }
  });

  it('leaves sessions that did not ask for it alone, and can be turned off', async () => {
    const clientId = await handshake(t.url);
    const { body } = await post(t.url, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling', ext: { ack: 0 } }]);
    assert.equal(at(body, 0).ext, undefined);
    const off = await startServer({ ack: false });
    try {
      const { body: hs } = await post(off.url, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'], ext: { ack: true } }]);
      assert.equal(at(hs, 0).ext, undefined);
    } finally {
      await off.close();
    }
  });
});

describe('ack extension with the CometD client behind a lossy network', () => {
  let t: TestServer;
  let proxy: LossyProxy;
  const clients: CometD[] = [];

  before(async () => {
    t = await startServer({ maxQueue: 20_000 });
    proxy = await LossyProxy.start(t.address);
  });
  after(async () => {
    await Promise.all(clients.map((cometd) => new Promise((resolve) => (cometd.isDisconnected() ? resolve(null) : cometd.disconnect(resolve)))));
    await proxy.close();
    await t.close();
  });

  /** A CometD client with the AckExtension, through the proxy; resolves once subscribed. */
  async function subscribedClient(channel: string, transport: 'long-polling' | 'websocket' = 'long-polling'): Promise<{ cometd: CometD; data: unknown[] }> {
    const cometd = new CometD();
    clients.push(cometd);
    if (transport === 'long-polling') cometd.unregisterTransport('websocket');
    else cometd.unregisterTransport('long-polling');
    // Quick retries so that a lost line costs milliseconds, not CometD's default seconds.
    cometd.configure({ url: `http://127.0.0.1:${proxy.port}${t.server.options.path}`, logLevel: 'warn', backoffIncrement: 10, maxBackoff: 100 });
    cometd.registerExtension('ack', new AckExtension());
    const data: unknown[] = [];
    await new Promise<void>((resolve, reject) => {
      cometd.handshake((reply) => {
        if (!reply.successful) return reject(new Error(JSON.stringify(reply)));
        cometd.subscribe(channel, (message: CometDMessage) => void data.push(message.data), (sub) => (sub.successful ? resolve() : reject(new Error(JSON.stringify(sub)))));
      });
    });
    return { cometd, data };
  }

  it('redelivers a poll response lost in flight', { timeout: 20_000 }, async () => {
    const { data } = await subscribedClient('/ack/one');
    await new Promise((resolve) => setTimeout(resolve, 100)); // the next connect is held now
    proxy.loseResponseWith('lost-then-resent');
    await t.server.publish('/ack/one', 'lost-then-resent');
    await waitFor(() => data.length > 0, 10_000, 'the message, resent');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(proxy.lost, 1, 'the response really was lost');
    assert.deepEqual(data, ['lost-then-resent'], 'once, after the resend');
  });

  for (const transport of ['long-polling', 'websocket'] as const) {
    it(`${transport}: gets 10 000 messages exactly once and in order while every line is cut at random moments`, { timeout: 90_000 }, async () => {
      const TOTAL = 10_000;
      const { data } = await subscribedClient(`/ack/stream/${transport}`, transport);
      let published = 0;
      let cuts = 0;
      const publisher = (async () => {
        while (published < TOTAL) {
          for (let i = 0; i < 25 && published < TOTAL; i++) await t.server.publish(`/ack/stream/${transport}`, published++);
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
      })();
      while (published < TOTAL) {
        await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 80));
        proxy.cut();
        cuts++;
      }
      await publisher;
      await waitFor(() => data.length >= TOTAL, 60_000, () => `all ${TOTAL} messages (have ${data.length})`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.ok(cuts >= 10, `cut ${cuts} times`);
      assert.equal(data.length, TOTAL, 'no duplicate');
      assert.ok(data.every((value, i) => value === i), 'every message, in order');
    });
  }
});
