// Lean subscribers for the load generator: raw `ws` sockets speaking just enough of each protocol
// to subscribe and stay subscribed. Every received benchmark message goes to a Recorder.
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import WebSocket from 'ws';

const EMPTY = Buffer.alloc(0);

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// The published data, as every server serialises it: {"run":"…","seq":N,"t":T} or {"probe":"…","t":T}.
const DATA = /\{"run":"([^"]*)","seq":(\d+),"t":([0-9.e+-]+)\}/g;
const PROBE = /\{"probe":"([^"]*)","t":/g;

/** Counts deliveries of the current run and keeps their latencies. */
export class Recorder {
  constructor() {
    this.runId = null;
    this.latencies = new Float64Array(0);
    this.count = 0;
    this.overflow = 0;
    this.stale = 0;
    this.outOfOrder = 0;
    this.lastAt = 0;
    this.frames = 0;
    this.probeId = null;
    this.probeCount = 0;
    this.errors = 0;
    this.lastError = null;
  }

  startRun(runId, expected) {
    this.runId = runId;
    if (this.latencies.length < expected) this.latencies = new Float64Array(expected);
    this.count = 0;
    this.overflow = 0;
    this.stale = 0;
    this.outOfOrder = 0;
    this.lastAt = 0;
    this.frames = 0;
  }

  startProbe(id) {
    this.probeId = id;
    this.probeCount = 0;
  }

  /**
   * One message's data as published: {run, seq, t} or a probe {probe, t}. True when it counts
   * for the current run.
   */
  receive(client, data) {
    const now = nowMs();
    if (data.probe !== undefined) {
      if (data.probe === this.probeId && client.probe !== data.probe) {
        client.probe = data.probe;
        this.probeCount++;
      }
      return false;
    }
    if (data.run !== this.runId) {
      this.stale++;
      return false;
    }
    if (client.run !== data.run) {
      client.run = data.run;
      client.lastSeq = -1;
    }
    if (data.seq <= client.lastSeq) this.outOfOrder++;
    else client.lastSeq = data.seq;
    if (this.count < this.latencies.length) this.latencies[this.count++] = now - data.t;
    else this.overflow++;
    this.lastAt = now;
    return true;
  }

  /**
   * Counts every benchmark message (and probe) found in a frame or response, without parsing the
   * JSON around it: the generator must cost less than the servers it measures, and every server's
   * clients use this same scan. Returns how many counted for the current run.
   */
  scan(client, text) {
    let counted = 0;
    DATA.lastIndex = 0;
    for (let match; (match = DATA.exec(text)) !== null; ) {
      if (this.receive(client, { run: match[1], seq: Number(match[2]), t: Number(match[3]) })) counted++;
    }
    if (counted === 0 && text.includes('"probe":"')) {
      PROBE.lastIndex = 0;
      for (let match; (match = PROBE.exec(text)) !== null; ) this.receive(client, { probe: match[1] });
    }
    return counted;
  }

  fail(client, error) {
    if (client.failed) return;
    client.failed = true;
    this.errors++;
    this.lastError = String(error?.message ?? error);
  }
}

/**
 * Every raw socket reads into this one buffer (`onread`): no Buffer is allocated and no stream
 * event is emitted per read. Reads are handled one at a time, so sharing it is safe; a socket
 * copies out only a partial frame.
 */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

/**
 * A minimal WebSocket client on a raw TCP socket (RFC 6455: upgrade, masked frames out, unmasked
 * frames in, ping answered, no extensions): it parses frames with a few index reads instead of
 * `ws`'s stream machinery, so that 5 000 subscribers receiving 100 000 messages a second do not
 * saturate the load generator before the server. Same interface as the part of `ws` the
 * subscribers use: events open, message (text), close (code), error; send(text); terminate().
 */
export class RawWebSocket extends EventEmitter {
  constructor(url, { handshakeTimeout = 10_000 } = {}) {
    super();
    const { hostname, port, pathname, search } = new URL(url);
    this.open = false;
    this.buffer = EMPTY;
    this.fragments = null;
    this.timer = setTimeout(() => this.fail(new Error('opening handshake timed out')), handshakeTimeout);
    this.socket = net.connect({ port: Number(port), host: hostname, noDelay: true, onread: { buffer: READ_BUFFER, callback: (n, buffer) => this.read(buffer, n) } });
    this.socket.on('connect', () => {
      const key = randomBytes(16).toString('base64');
      this.socket.write(`GET ${pathname}${search} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    this.socket.on('error', (error) => this.fail(error));
    this.socket.on('close', () => {
      clearTimeout(this.timer);
      this.open = false;
      this.emit('close', 1006, '');
    });
  }

  read(shared, n) {
    const chunk = shared.subarray(0, n);
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    if (!this.open) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end !== -1) {
        const status = this.buffer.toString('latin1', 0, this.buffer.indexOf('\r\n'));
        if (!/^HTTP\/1\.1 101/.test(status)) return this.fail(new Error(`upgrade refused: ${status}`));
        clearTimeout(this.timer);
        this.open = true;
        this.buffer = this.buffer.subarray(end + 4);
        this.emit('open');
      }
    }
    if (this.open) this.frames();
    // What is left (a partial frame) must not stay in the shared buffer, which the next read reuses.
    if (this.buffer.length > 0 && this.buffer.buffer === shared.buffer) this.buffer = Buffer.from(this.buffer);
  }

  frames() {
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      let length = b[1] & 0x7f;
      let at = 2;
      if (length === 126) {
        if (b.length < 4) return;
        length = b.readUInt16BE(2);
        at = 4;
      } else if (length === 127) {
        if (b.length < 10) return;
        length = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      if (b.length < at + length) return;
      const payload = b.subarray(at, at + length);
      this.buffer = b.subarray(at + length);
      if (opcode === 0x9) this.frame(0xa, payload);
      else if (opcode === 0x8) {
        this.emit('close', payload.length >= 2 ? payload.readUInt16BE(0) : 1005, payload.subarray(2).toString());
        this.socket.destroy();
        return;
      } else if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
        if (!fin || this.fragments) {
          (this.fragments ??= []).push(Buffer.from(payload));
          if (!fin) continue;
          const whole = Buffer.concat(this.fragments);
          this.fragments = null;
          this.emit('message', whole.toString('utf8'));
        } else this.emit('message', payload.toString('utf8'));
      }
    }
  }

  /** Writes one masked frame (clients must mask, RFC 6455 §5.3). */
  frame(opcode, payload) {
    const length = payload.length;
    const header = length < 126 ? 6 : length < 65_536 ? 8 : 14;
    const frame = Buffer.allocUnsafe(header + length);
    frame[0] = 0x80 | opcode;
    if (length < 126) frame[1] = 0x80 | length;
    else if (length < 65_536) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(length, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(length), 2);
    }
    // Any 32-bit value will do for the generator's own frames; crypto would cost a call per frame.
    frame.writeUInt32BE((Math.random() * 0x1_0000_0000) >>> 0, header - 4);
    for (let i = 0; i < length; i++) frame[header + i] = payload[i] ^ frame[header - 4 + (i & 3)];
    this.socket.write(frame);
  }

  send(text) {
    if (this.open) this.frame(0x1, Buffer.from(text));
  }

  terminate() {
    this.open = false;
    this.socket.destroy();
  }

  fail(error) {
    this.emit('error', error);
    this.socket.destroy();
  }
}

/** The WebSocket client the subscribers use: the raw one above, or `ws` (--ws-client ws). */
let WebSocketClient = RawWebSocket;
export function useWsLibrary(useWs) {
  WebSocketClient = useWs
    ? class extends WebSocket {
        constructor(url) {
          super(url, { perMessageDeflate: false, handshakeTimeout: 10_000 });
        }
      }
    : RawWebSocket;
}

/**
 * Opens a subscriber's WebSocket with what every kind of subscriber needs around it: a deadline
 * for the set-up, and one way to fail (counted, socket dropped, set-up promise rejected). A socket
 * the server closes fails the subscriber unless the generator closed it.
 */
function openSocket({ url, client, recorder, timeoutMs, reject }) {
  const timer = setTimeout(() => fail(new Error(`setup timed out after ${timeoutMs} ms`)), timeoutMs);
  const fail = (error) => {
    clearTimeout(timer);
    recorder.fail(client, error);
    try {
      client.ws.terminate();
    } catch {}
    reject(error);
  };
  client.ws = new WebSocketClient(url);
  client.ws.on('error', (error) => fail(error));
  client.ws.on('close', (code, reason) => {
    if (!client.closing) fail(new Error(`socket closed by the server: ${code} ${reason}`));
  });
  return { fail, settled: () => clearTimeout(timer) };
}

/**
 * A Bayeux subscriber over one WebSocket: handshake, connect (advice timeout 0), subscribe, then
 * always one held /meta/connect, re-sent whenever the previous one is answered. Works against
 * Perihelion (/bayeux) and Faye (/faye), which both accept the handshake on the socket.
 *
 * bundle: set up as the Perihelion client does (a handshake asking for `ext.bundle`, see the
 * server's core/dispatch.ts): one frame with the handshake, the subscribe and the first connect,
 * which the server holds, and one frame back answering the handshake and the subscribe: one
 * frame each way instead of three.
 */
export function bayeuxSubscriber({ url, channels, recorder, timeoutMs, bundle = false }) {
  const wanted = new Set(channels);
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, ready: false, run: null, lastSeq: -1, probe: null, clientId: null };
    let nextId = 0;
    const send = (...messages) => {
      for (const message of messages) {
        message.id = String(++nextId);
        if (client.clientId) message.clientId = client.clientId;
      }
      client.ws.send(JSON.stringify(messages));
    };
    const connectMessage = (advice) => (advice ? { channel: '/meta/connect', connectionType: 'websocket', advice } : { channel: '/meta/connect', connectionType: 'websocket' });
    const connect = (advice) => send(connectMessage(advice));
    const subscribeMessage = () => ({ channel: '/meta/subscribe', subscription: channels.length === 1 ? channels[0] : channels });
    const handshake = { channel: '/meta/handshake', version: '1.0', minimumVersion: '1.0', supportedConnectionTypes: ['websocket'] };
    const { fail, settled } = openSocket({ url, client, recorder, timeoutMs, reject });
    // Bundled, the first connect is held by the server (the handshake's reply says connected):
    // one frame each way, as the Perihelion client sets up.
    client.ws.on('open', () => (bundle ? send({ ...handshake, ext: { bundle: true } }, subscribeMessage(), connectMessage()) : send(handshake)));
    client.ws.on('message', (raw) => {
      const text = raw.toString();
      if (client.ready && !text.includes('"/meta/')) {
        // Data only: scanned, not parsed.
        if (recorder.scan(client, text) > 0) recorder.frames++;
        return;
      }
      let messages;
      try {
        messages = JSON.parse(text);
      } catch (error) {
        return fail(new Error(`bad frame: ${error.message}`));
      }
      if (!Array.isArray(messages)) messages = [messages];
      let counted = false;
      for (const message of messages) {
        if (wanted.has(message.channel)) {
          if (recorder.receive(client, message.data)) counted = true;
          continue;
        }
        switch (message.channel) {
          case '/meta/handshake':
            if (!message.successful) return fail(new Error(`handshake refused: ${message.error ?? JSON.stringify(message)}`));
            client.clientId = message.clientId;
            if (!bundle) connect({ timeout: 0 });
            else if (message.ext?.bundle !== true) return fail(new Error('the server ignored the bundled set-up'));
            break;
          case '/meta/connect':
            if (!message.successful || message.advice?.reconnect === 'handshake' || message.advice?.reconnect === 'none') {
              return fail(new Error(`connect failed: ${message.error ?? JSON.stringify(message)}`));
            }
            // Bundled, this is the held connect: the subscribe's reply came long before.
            if (client.ready) connect();
            else if (!client.subscribing) {
              client.subscribing = true;
              send(subscribeMessage());
            }
            break;
          case '/meta/subscribe':
            if (!message.successful) return fail(new Error(`subscribe refused: ${message.error ?? JSON.stringify(message)}`));
            client.ready = true;
            settled();
            // Bundled, the first connect is the held one already.
            if (!bundle) connect();
            resolve(client);
            break;
        }
      }
      if (counted) recorder.frames++;
    });
  });
}

/**
 * A Nchan subscriber: one WebSocket to `<url>?id=<channel>[,<channel>…]` (Nchan's multiplexed
 * channels). The open socket is the subscription, nothing is sent, and every frame is one
 * published body, exactly as it was POSTed.
 */
export function nchanSubscriber({ url, channels, recorder, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, run: null, lastSeq: -1, probe: null };
    const { settled } = openSocket({ url: `${url}?id=${channels.map(encodeURIComponent).join(',')}`, client, recorder, timeoutMs, reject });
    client.ws.on('open', () => {
      settled();
      resolve(client);
    });
    client.ws.on('message', (raw) => {
      if (recorder.scan(client, raw.toString()) > 0) recorder.frames++;
    });
  });
}

/**
 * A Socket.IO subscriber speaking Engine.IO 4 / Socket.IO 5 directly over one WebSocket
 * (`/socket.io/?EIO=4&transport=websocket`): open, connect to the main namespace, emit
 * `subscribe` with an acknowledgement (the server joins the room), answer pings.
 */
export function socketIoRawSubscriber({ url, rooms, event, recorder, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, ready: false, run: null, lastSeq: -1, probe: null };
    const prefix = `42["${event}",`;
    const { fail, settled } = openSocket({ url, client, recorder, timeoutMs, reject });
    client.ws.on('message', (raw) => {
      const packet = raw.toString();
      if (packet.startsWith(prefix)) {
        // 42["fanout",{...}]
        if (recorder.scan(client, packet) > 0) recorder.frames++;
        return;
      }
      switch (packet[0]) {
        case '0': // engine.io open
          client.ws.send('40');
          return;
        case '2': // engine.io ping
          client.ws.send('3');
          return;
        case '1': // engine.io close
          return fail(new Error('engine.io close packet'));
        case '4':
          break;
        default:
          return;
      }
      switch (packet[1]) {
        case '0': // socket.io CONNECT accepted
          client.ws.send(`420${JSON.stringify(['subscribe', rooms])}`);
          return;
        case '3': // ACK of our subscribe
          client.ready = true;
          settled();
          resolve(client);
          return;
        case '1':
          return fail(new Error('socket.io namespace disconnect'));
        case '4':
          return fail(new Error(`socket.io connect error: ${packet.slice(2)}`));
      }
    });
  });
}

/** The same subscriber through the official socket.io-client (heavier; for comparison). */
export async function socketIoOfficialSubscriber({ url, rooms, event, recorder, timeoutMs }) {
  const { io } = await import('socket.io-client');
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, ready: false, run: null, lastSeq: -1, probe: null };
    const socket = io(url, { transports: ['websocket'], forceNew: true, reconnection: false, timeout: timeoutMs, perMessageDeflate: false });
    client.socket = socket;
    client.close = () => socket.close();
    const timer = setTimeout(() => fail(new Error(`setup timed out after ${timeoutMs} ms`)), timeoutMs);
    const fail = (error) => {
      clearTimeout(timer);
      recorder.fail(client, error);
      socket.close();
      reject(error);
    };
    // Engine.IO sends one packet per WebSocket frame.
    socket.on(event, (data) => {
      if (recorder.receive(client, data)) recorder.frames++;
    });
    socket.on('connect_error', (error) => fail(error));
    socket.on('disconnect', (reason) => {
      if (!client.closing) fail(new Error(`disconnected: ${reason}`));
    });
    socket.on('connect', () => {
      socket.emit('subscribe', rooms, () => {
        client.ready = true;
        clearTimeout(timer);
        resolve(client);
      });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Long-polling subscribers: plain HTTP with one keep-alive socket per client, as a browser tab has.

/**
 * One keep-alive HTTP/1.1 connection that sends one request at a time and parses responses
 * itself (Content-Length or chunked): several times cheaper than node:http's client, so that a
 * thousand long-polling clients do not saturate the load generator before the server.
 */
export class HttpLine {
  constructor(host, port) {
    this.host = host;
    this.port = port;
    this.socket = null;
    this.pending = null; // {resolve, reject, timer, bytes, resendable}
    this.buffer = Buffer.alloc(0);
  }

  request({ method = 'POST', path, headers = {}, body, timeoutMs }) {
    if (this.pending) return Promise.reject(new Error('one request at a time per line'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no response within ${timeoutMs} ms`)), timeoutMs);
      const payload = body === undefined ? null : Buffer.from(body);
      let head = `${method} ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\nConnection: keep-alive\r\n`;
      for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`;
      if (payload) head += `Content-Length: ${payload.length}\r\n`;
      const bytes = payload ? Buffer.concat([Buffer.from(`${head}\r\n`, 'latin1'), payload]) : Buffer.from(`${head}\r\n`, 'latin1');
      const reused = this.socket !== null && !this.socket.destroyed;
      this.pending = { resolve, reject, timer, bytes, resendable: reused };
      if (!reused) this.open();
      this.socket.write(bytes);
    });
  }

  open() {
    this.buffer = Buffer.alloc(0);
    const socket = net.connect(this.port, this.host);
    socket.setNoDelay(true);
    this.socket = socket;
    socket.on('data', (chunk) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.parse();
    });
    socket.on('error', (error) => {
      // The same race, ended by a reset (the server closed with the request unread): 'close'
      // follows and sends it again.
      if (this.socket === socket && this.pending?.resendable && this.buffer.length === 0 && (error.code === 'ECONNRESET' || error.code === 'EPIPE')) return;
      this.fail(error);
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      const pending = this.pending;
      if (pending?.resendable && this.buffer.length === 0) {
        // The keep-alive race of HTTP/1.1: the server closed the idle connection (its
        // keepAliveTimeout) as this request left on it, and no byte of an answer came. Sent once
        // more on a new connection, as browsers do with a request on a reused connection.
        pending.resendable = false;
        this.open();
        this.socket.write(pending.bytes);
        return;
      }
      this.fail(new Error('connection closed by the server'));
    });
  }

  parse() {
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end === -1 || !this.pending) return;
    const lines = this.buffer.toString('latin1', 0, end).split('\r\n');
    const status = Number(lines[0].split(' ')[1]);
    const headers = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === 'set-cookie') (headers[name] ??= []).push(value);
      else headers[name] = value;
    }
    let body;
    let consumed;
    if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (this.buffer.length < end + 4 + length) return;
      body = this.buffer.toString('utf8', end + 4, end + 4 + length);
      consumed = end + 4 + length;
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      const parts = [];
      let at = end + 4;
      for (;;) {
        const eol = this.buffer.indexOf('\r\n', at);
        if (eol === -1) return;
        const size = Number.parseInt(this.buffer.toString('latin1', at, eol), 16);
        if (this.buffer.length < eol + 2 + size + 2) return;
        if (size === 0) {
          consumed = eol + 4;
          break;
        }
        parts.push(this.buffer.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
      body = Buffer.concat(parts).toString('utf8');
    } else {
      return this.fail(new Error('a response without Content-Length or chunked encoding'));
    }
    this.buffer = this.buffer.subarray(consumed);
    const { resolve, timer } = this.pending;
    this.pending = null;
    clearTimeout(timer);
    if (/close/i.test(headers.connection ?? '')) this.socket?.destroy();
    resolve({ status, headers, text: body });
  }

  fail(error) {
    const pending = this.pending;
    this.pending = null;
    if (pending) {
      clearTimeout(pending.timer);
      this.socket?.destroy();
      pending.reject(error);
    }
  }

  close() {
    this.socket?.destroy();
    this.fail(new Error('closed'));
  }
}

/**
 * A Bayeux subscriber over long-polling: handshake, connect with advice.timeout 0 and subscribe in
 * one request, then one /meta/connect after another; messages arrive in the connect responses.
 * Keeps the session cookie (Perihelion binds sessions to BAYEUX_BROWSER). With several `urls` (the
 * nodes of a cluster), each request goes to the next one in turn: a balancer without affinity.
 */
export function bayeuxLongPollSubscriber({ urls, channels, recorder, timeoutMs }) {
  const { pathname } = new URL(urls[0]);
  const lines = urls.map((url) => new HttpLine(new URL(url).hostname, Number(new URL(url).port)));
  let turn = 0;
  const client = { failed: false, ready: false, run: null, lastSeq: -1, probe: null, clientId: null, closing: false };
  client.close = () => {
    client.closing = true;
    for (const line of lines) line.close();
  };
  const wanted = new Set(channels);
  let cookie = '';
  let nextId = 0;
  const post = async (messages, ms) => {
    for (const message of messages) {
      message.id = String(++nextId);
      if (client.clientId) message.clientId = client.clientId;
    }
    const line = lines[turn++ % lines.length];
    const response = await line.request({ path: pathname, body: JSON.stringify(messages), headers: { 'Content-Type': 'application/json', ...(cookie ? { Cookie: cookie } : {}) }, timeoutMs: ms });
    const set = response.headers['set-cookie'];
    if (set) cookie = set.map((c) => c.split(';')[0]).join('; ');
    if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${response.text.slice(0, 200)}`);
    return response.text;
  };
  /** Counts the data in a connect response (scanned, not parsed); a failed connect ends the client. */
  const take = (text) => {
    if (text.includes('"successful":false')) {
      const failed = JSON.parse(text).find((m) => m.successful === false);
      throw new Error(`${failed.channel} failed: ${failed.error ?? JSON.stringify(failed)}`);
    }
    if (recorder.scan(client, text) > 0) recorder.frames++;
  };
  const poll = async () => {
    while (!client.closing) {
      try {
        take(await post([{ channel: '/meta/connect', connectionType: 'long-polling' }], 70_000));
      } catch (error) {
        if (!client.closing) recorder.fail(client, error);
        return;
      }
    }
  };
  return startPolling(client, recorder, poll, async () => {
    const [hs] = JSON.parse(await post([{ channel: '/meta/handshake', version: '1.0', minimumVersion: '1.0', supportedConnectionTypes: ['long-polling'] }], timeoutMs));
    if (!hs?.successful) throw new Error(`handshake refused: ${hs?.error ?? JSON.stringify(hs)}`);
    client.clientId = hs.clientId;
    const text = await post([{ channel: '/meta/connect', connectionType: 'long-polling', advice: { timeout: 0 } }, { channel: '/meta/subscribe', subscription: channels.length === 1 ? channels[0] : channels }], timeoutMs);
    const sub = JSON.parse(text).find((m) => m.channel === '/meta/subscribe');
    if (!sub?.successful) throw new Error(`subscribe refused: ${sub?.error ?? text}`);
    take(text);
  });
}

/**
 * A Socket.IO subscriber over Engine.IO 4 long-polling (`transport=polling`): open, join the main
 * namespace, emit `subscribe` with an ack, then one GET after another; packets in a response are
 * separated by U+001E; pings (`2`) are answered with a POST of `3`.
 */
export function socketIoPollingSubscriber({ url, rooms, event, recorder, timeoutMs }) {
  const { hostname, port, pathname, search } = new URL(url);
  // Engine.IO polling holds a GET while packets go up in POSTs: two lines, as a browser uses.
  const polls = new HttpLine(hostname, Number(port));
  const posts = new HttpLine(hostname, Number(port));
  const client = { failed: false, ready: false, run: null, lastSeq: -1, probe: null, closing: false };
  client.close = () => {
    client.closing = true;
    polls.close();
    posts.close();
  };
  const prefix = `42["${event}",`;
  let sid = null;
  const at = () => `${pathname}${search}&sid=${encodeURIComponent(sid)}`;
  // Packets going up wait for each other (one request at a time per line).
  let sending = Promise.resolve();
  const send = (packet) => {
    const sent = sending.then(() => posts.request({ path: at(), body: packet, headers: { 'Content-Type': 'text/plain;charset=UTF-8' }, timeoutMs: 10_000 }));
    sending = sent.catch(() => {});
    return sent;
  };
  /** Handles one response of packets; resolves true once the subscribe is acknowledged. */
  const handle = (text) => {
    let acked = false;
    let counted = false;
    for (const packet of text.split('\x1e')) {
      if (packet.startsWith(prefix)) {
        if (recorder.scan(client, packet) > 0) counted = true;
      } else if (packet === '2') void send('3').catch(() => {});
      else if (packet.startsWith('43')) acked = true;
      else if (packet === '1' || packet.startsWith('44')) throw new Error(`closed by the server: ${packet}`);
    }
    if (counted) recorder.frames++;
    return acked;
  };
  const poll = async () => {
    while (!client.closing) {
      try {
        const response = await polls.request({ method: 'GET', path: at(), timeoutMs: 70_000 });
        if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${response.text.slice(0, 200)}`);
        handle(response.text);
      } catch (error) {
        if (!client.closing) recorder.fail(client, error);
        return;
      }
    }
  };
  return startPolling(client, recorder, poll, async () => {
    const open = await polls.request({ method: 'GET', path: `${pathname}${search}`, timeoutMs });
    if (open.status !== 200 || open.text[0] !== '0') throw new Error(`engine.io open failed: HTTP ${open.status} ${open.text.slice(0, 200)}`);
    sid = JSON.parse(open.text.slice(1)).sid;
    await send('40');
    await send(`420${JSON.stringify(['subscribe', rooms])}`);
    const until = Date.now() + timeoutMs;
    for (let acked = false; !acked; ) {
      if (Date.now() > until) throw new Error('no subscribe ack');
      const response = await polls.request({ method: 'GET', path: at(), timeoutMs });
      acked = handle(response.text);
    }
  });
}

/** Runs a polling subscriber's set-up, then starts its poll loop; a failed set-up is counted and the client closed. */
async function startPolling(client, recorder, poll, setup) {
  try {
    await setup();
  } catch (error) {
    recorder.fail(client, error);
    client.close();
    throw error;
  }
  client.ready = true;
  void poll();
  return client;
}

export function closeClient(client) {
  client.closing = true;
  try {
    if (client.close) client.close();
    else client.ws?.terminate();
  } catch {}
}
