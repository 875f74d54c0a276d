/**
 * Cheap raw Bayeux clients for churn tests and the soak run (bench/soak.mjs imports the compiled
 * copy): each one lives a short life on one transport (WebSocket, long-polling, SSE or HTTP
 * streaming), subscribes to exact channels, a wildcard and a presence-bearing channel, receives,
 * and leaves cleanly (/meta/disconnect) or abruptly (socket destroyed mid-frame, held long-poll
 * abandoned, stream cut), or impatiently (a disconnect sent while its subscribe is still in flight).
 * They keep no cookies (the server identifies them by clientId), so a thousand of them cost little.
 */
import { once } from 'node:events';
import { WebSocket } from 'ws';

export type ChurnTransport = 'websocket' | 'long-polling' | 'eventsource' | 'http-streaming';
export type ChurnLeave = 'clean' | 'abrupt' | 'impatient';
export const CHURN_TRANSPORTS: readonly ChurnTransport[] = ['websocket', 'long-polling', 'eventsource', 'http-streaming'];
export const CHURN_LEAVES: readonly ChurnLeave[] = ['clean', 'abrupt', 'impatient'];

export interface ChurnLife {
  transport: ChurnTransport;
  leave: ChurnLeave;
  /** Channels and patterns to subscribe to. */
  channels: string[];
  /** How long to stay once subscribed, ms. */
  lifetimeMs: number;
  /** Unsubscribe from the first channel before leaving (presence then holds a leave for its grace). */
  unsubscribeFirst?: boolean;
}

export interface ChurnOutcome {
  /** Broadcast messages received. */
  received: number;
  /** Something failed on the way (a refused handshake, a socket error): counted, not thrown. */
  error: string | null;
  /** Handshakes made again after a 402 (the session expired before its first connect). */
  rehandshakes?: number;
}

type Msg = Record<string, unknown>;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The channels of client number `n` out of `rooms` presence rooms: exact, wildcard and presence-bearing. */
export function churnChannels(n: number, rooms = 20): string[] {
  const channels = ['/churn/all', `/churn/room/${n % rooms}`];
  if (n % 3 === 0) channels.push(`/churn/w${n % 5}/*`);
  if (n % 7 === 0) channels.push('/churn/**');
  if (n % 11 === 0) channels.push(`/presence/churn/room/${n % rooms}`);
  return channels;
}

/** Publishes one round of churn traffic through `publish` (a server-side publish or an HTTP call). */
export async function churnRound(publish: (channel: string, data: unknown) => Promise<unknown>, tick: number, rooms = 20): Promise<void> {
  const data = { tick, text: 'churn churn churn churn churn churn churn churn' };
  await publish('/churn/all', data);
  await publish(`/churn/room/${tick % rooms}`, data);
  await publish(`/churn/w${tick % 5}/x`, data);
}

/** One client's life on `base` (http://host:port/bayeux). Never throws. */
export async function churnClient(base: string, life: ChurnLife): Promise<ChurnOutcome> {
  const once = (): Promise<ChurnOutcome> => {
    if (life.transport === 'websocket') return websocketLife(base.replace(/^http/, 'ws'), life);
    if (life.transport === 'long-polling') return longPollingLife(base, life);
    return streamLife(base, life);
  };
  try {
    try {
      return await once();
    } catch (error) {
      // A session that expired before its first connect came (a machine so busy that the connect
      // took longer than maxInterval): handshake again, as every client does on a 402.
      if (!(error instanceof Expired)) throw error;
      return { ...(await once()), rehandshakes: 1 };
    }
  } catch (error) {
    return { received: 0, error: String((error as Error)?.message ?? error) };
  }
}

/** The server answered 402: the session is gone. */
class Expired extends Error {}

async function post(url: string, body: unknown, signal?: AbortSignal): Promise<Msg[]> {
  const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), ...(signal ? { signal } : {}) });
  return (await response.json()) as Msg[];
}

function countBroadcasts(messages: readonly Msg[]): number {
  let n = 0;
  for (const m of messages) if (typeof m.channel === 'string' && !m.channel.startsWith('/meta/') && m.data !== undefined && m.successful === undefined) n++;
  return n;
}

async function handshake(base: string, types: string[]): Promise<string> {
  const [reply] = await post(base, [{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: types }]);
  if (typeof reply?.clientId !== 'string') throw new Error(`handshake refused: ${JSON.stringify(reply)}`);
  return reply.clientId;
}

async function websocketLife(url: string, life: ChurnLife): Promise<ChurnOutcome> {
  const ws = new WebSocket(url);
  ws.on('error', () => {});
  await once(ws, 'open');
  let received = 0;
  let nextId = 0;
  const waiting = new Map<string, (m: Msg) => void>();
  ws.on('message', (data) => {
    const batch = JSON.parse(String(data)) as Msg[];
    received += countBroadcasts(batch);
    for (const m of batch) {
      const id = m.id as string | undefined;
      if (id !== undefined && waiting.has(id)) {
        waiting.get(id)!(m);
        waiting.delete(id);
      }
    }
  });
  const request = (message: Msg): Promise<Msg> => {
    const id = `r${++nextId}`;
    ws.send(JSON.stringify([{ ...message, id }]));
    return new Promise((resolve, reject) => {
      waiting.set(id, resolve);
      setTimeout(() => reject(new Error(`no reply to ${message.channel as string}`)), 5000).unref();
    });
  };
  try {
    const hs = await request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
    if (typeof hs.clientId !== 'string') throw new Error(`handshake refused: ${JSON.stringify(hs)}`);
    const clientId = hs.clientId;
    await request({ channel: '/meta/connect', clientId, connectionType: 'websocket' });
    // The held connect: answered on timeout, and sent again each time, as clients do.
    const connectAgain = (): void => {
      if (ws.readyState !== WebSocket.OPEN) return;
      request({ channel: '/meta/connect', clientId, connectionType: 'websocket' }).then(connectAgain, () => {});
    };
    connectAgain();
    if (life.leave === 'impatient') {
      void request({ channel: '/meta/subscribe', clientId, subscription: life.channels }).catch(() => {});
      ws.send(JSON.stringify([{ channel: '/meta/disconnect', clientId }]));
      await sleep(20);
      ws.close();
      return { received, error: null };
    }
    const sub = await request({ channel: '/meta/subscribe', clientId, subscription: life.channels });
    if (sub.successful !== true) throw new Error(`subscribe refused: ${JSON.stringify(sub)}`);
    await sleep(life.lifetimeMs);
    if (life.unsubscribeFirst) await request({ channel: '/meta/unsubscribe', clientId, subscription: life.channels[1] });
    if (life.leave === 'clean') {
      await request({ channel: '/meta/disconnect', clientId });
      ws.close();
    } else {
      // Mid-frame: the header of a masked 4 KB text frame and a few bytes of it, then the socket is destroyed.
      const raw = (ws as unknown as { _socket: import('node:net').Socket })._socket;
      raw.write(Buffer.from([0x81, 0xfe, 0x10, 0x00, 1, 2, 3, 4, 0x5b, 0x7b]));
      raw.destroy();
    }
    return { received, error: null };
  } finally {
    if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
  }
}

async function longPollingLife(base: string, life: ChurnLife): Promise<ChurnOutcome> {
  const clientId = await handshake(base, ['long-polling']);
  const handshakenAt = Date.now();
  let received = 0;
  if (life.leave === 'impatient') {
    // The subscribe and the disconnect race on two requests: the page was closed as it subscribed.
    const sub = post(base, [{ channel: '/meta/subscribe', clientId, subscription: life.channels }]).catch(() => []);
    await post(base, [{ channel: '/meta/disconnect', clientId }]);
    await sub;
    return { received, error: null };
  }
  const first = await post(base, [
    { channel: '/meta/connect', clientId, connectionType: 'long-polling' },
    { channel: '/meta/subscribe', clientId, subscription: life.channels },
  ]);
  if (String(first[1]?.error).startsWith('402:')) throw new Expired('expired before its first connect');
  if (first[1]?.successful !== true) throw new Error(`${life.transport} subscribe refused ${Date.now() - handshakenAt} ms after a handshake: ${String(first[1]?.error)}`);
  const until = Date.now() + life.lifetimeMs;
  let abort = new AbortController();
  let polling = true;
  const poll = (async () => {
    while (polling) {
      abort = new AbortController();
      try {
        const replies = await post(base, [{ channel: '/meta/connect', clientId, connectionType: 'long-polling' }], abort.signal);
        received += countBroadcasts(replies);
        if ((replies[0]?.advice as Msg | undefined)?.reconnect === 'none') return;
      } catch {
        return;
      }
    }
  })();
  await sleep(Math.max(0, until - Date.now()));
  if (life.unsubscribeFirst) await post(base, [{ channel: '/meta/unsubscribe', clientId, subscription: life.channels[1] }]);
  polling = false;
  if (life.leave === 'clean') {
    await post(base, [{ channel: '/meta/disconnect', clientId }]);
    await poll;
  } else {
    // Abandoned: the held connect's line is closed and the client never comes back.
    abort.abort();
    await poll;
  }
  return { received, error: null };
}

async function streamLife(base: string, life: ChurnLife): Promise<ChurnOutcome> {
  const type = life.transport;
  const clientId = await handshake(base, [type]);
  const handshakenAt = Date.now();
  if (life.leave === 'impatient') {
    const sub = post(base, [{ channel: '/meta/subscribe', clientId, subscription: life.channels }]).catch(() => []);
    await post(base, [{ channel: '/meta/disconnect', clientId }]);
    await sub;
    return { received: 0, error: null };
  }
  const first = await post(base, [
    { channel: '/meta/connect', clientId, connectionType: type },
    { channel: '/meta/subscribe', clientId, subscription: life.channels },
  ]);
  if (String(first[1]?.error).startsWith('402:')) throw new Expired('expired before its first connect');
  if (first[1]?.successful !== true) throw new Error(`${life.transport} subscribe refused ${Date.now() - handshakenAt} ms after a handshake: ${String(first[1]?.error)}`);
  const abort = new AbortController();
  const response = await fetch(`${base}/${clientId}`, { headers: { Accept: type === 'eventsource' ? 'text/event-stream' : 'application/x-ndjson' }, signal: abort.signal });
  let received = 0;
  const reading = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        received += decoder.decode(chunk, { stream: true }).split('"tick"').length - 1;
      }
    } catch {
      // cut by this client
    }
  })();
  await sleep(life.lifetimeMs);
  if (life.unsubscribeFirst) await post(base, [{ channel: '/meta/unsubscribe', clientId, subscription: life.channels[1] }]);
  if (life.leave === 'clean') {
    // The server ends the stream with the session.
    await post(base, [{ channel: '/meta/disconnect', clientId }]);
    await Promise.race([reading, sleep(2000)]);
  }
  abort.abort();
  await reading;
  return { received, error: null };
}
