// Lean subscribers for the load generator: raw `ws` sockets speaking just enough of each protocol
// to subscribe and stay subscribed. Every received benchmark message goes to a Recorder.
import WebSocket from 'ws';

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

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

  fail(client, error) {
    if (client.failed) return;
    client.failed = true;
    this.errors++;
    this.lastError = String(error?.message ?? error);
  }
}

const WS_OPTIONS = { perMessageDeflate: false, handshakeTimeout: 10_000 };

/**
 * A Bayeux subscriber over one WebSocket: handshake, connect (advice timeout 0), subscribe, then
 * always one held /meta/connect, re-sent whenever the previous one is answered. Works against
 * Perihelion (/bayeux) and Faye (/faye), which both accept the handshake on the socket.
 */
export function bayeuxSubscriber({ url, channel, recorder, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, ready: false, run: null, lastSeq: -1, probe: null, clientId: null };
    let nextId = 0;
    const send = (message) => {
      message.id = String(++nextId);
      if (client.clientId) message.clientId = client.clientId;
      client.ws.send(JSON.stringify([message]));
    };
    const connect = (advice) => send(advice ? { channel: '/meta/connect', connectionType: 'websocket', advice } : { channel: '/meta/connect', connectionType: 'websocket' });
    const timer = setTimeout(() => fail(new Error(`setup timed out after ${timeoutMs} ms`)), timeoutMs);
    const fail = (error) => {
      clearTimeout(timer);
      recorder.fail(client, error);
      try {
        client.ws.terminate();
      } catch {}
      reject(error);
    };

    client.ws = new WebSocket(url, WS_OPTIONS);
    client.ws.on('open', () => send({ channel: '/meta/handshake', version: '1.0', minimumVersion: '1.0', supportedConnectionTypes: ['websocket'] }));
    client.ws.on('error', (error) => fail(error));
    client.ws.on('close', (code, reason) => {
      if (!client.closing) fail(new Error(`socket closed by the server: ${code} ${reason}`));
    });
    client.ws.on('message', (raw) => {
      let messages;
      try {
        messages = JSON.parse(raw.toString());
      } catch (error) {
        return fail(new Error(`bad frame: ${error.message}`));
      }
      if (!Array.isArray(messages)) messages = [messages];
      let counted = false;
      for (const message of messages) {
        if (message.channel === channel) {
          if (recorder.receive(client, message.data)) counted = true;
          continue;
        }
        switch (message.channel) {
          case '/meta/handshake':
            if (!message.successful) return fail(new Error(`handshake refused: ${message.error ?? JSON.stringify(message)}`));
            client.clientId = message.clientId;
            connect({ timeout: 0 });
            break;
          case '/meta/connect':
            if (!message.successful || message.advice?.reconnect === 'handshake' || message.advice?.reconnect === 'none') {
              return fail(new Error(`connect failed: ${message.error ?? JSON.stringify(message)}`));
            }
            if (client.ready) connect();
            else if (!client.subscribing) {
              client.subscribing = true;
              send({ channel: '/meta/subscribe', subscription: channel });
            }
            break;
          case '/meta/subscribe':
            if (!message.successful) return fail(new Error(`subscribe refused: ${message.error ?? JSON.stringify(message)}`));
            client.ready = true;
            clearTimeout(timer);
            connect();
            resolve(client);
            break;
        }
      }
      if (counted) recorder.frames++;
    });
  });
}

/**
 * A Socket.IO subscriber speaking Engine.IO 4 / Socket.IO 5 directly over one WebSocket
 * (`/socket.io/?EIO=4&transport=websocket`): open, connect to the main namespace, emit
 * `subscribe` with an acknowledgement (the server joins the room), answer pings.
 */
export function socketIoRawSubscriber({ url, room, event, recorder, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const client = { ws: null, failed: false, ready: false, run: null, lastSeq: -1, probe: null };
    const prefix = `42["${event}",`;
    const timer = setTimeout(() => fail(new Error(`setup timed out after ${timeoutMs} ms`)), timeoutMs);
    const fail = (error) => {
      clearTimeout(timer);
      recorder.fail(client, error);
      try {
        client.ws.terminate();
      } catch {}
      reject(error);
    };
    client.ws = new WebSocket(url, WS_OPTIONS);
    client.ws.on('error', (error) => fail(error));
    client.ws.on('close', (code, reason) => {
      if (!client.closing) fail(new Error(`socket closed by the server: ${code} ${reason}`));
    });
    client.ws.on('message', (raw) => {
      const packet = raw.toString();
      if (packet.startsWith(prefix)) {
        // 42["fanout",{...}]
        if (recorder.receive(client, JSON.parse(packet.slice(2))[1])) recorder.frames++;
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
          client.ws.send(`420${JSON.stringify(['subscribe', room])}`);
          return;
        case '3': // ACK of our subscribe
          client.ready = true;
          clearTimeout(timer);
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
export async function socketIoOfficialSubscriber({ url, room, event, recorder, timeoutMs }) {
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
      socket.emit('subscribe', room, () => {
        client.ready = true;
        clearTimeout(timer);
        resolve(client);
      });
    });
  });
}

export function closeClient(client) {
  client.closing = true;
  try {
    if (client.close) client.close();
    else client.ws?.terminate();
  } catch {}
}
