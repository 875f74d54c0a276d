// The part every benchmark server shares: the IPC protocol with the load generator and the
// publisher. Each server module only says how to start, how to publish one message and how to stop.
//
// Parent → child: {type:'stats'} | {type:'probe', id, keys} | {type:'run', runId, rate, duration, keys, batch} | {type:'close'}
// Child → parent: {type:'ready', port, path} | {type:'stats', ...} | {type:'probed', id}
//                 | {type:'published', runId, count, errors, startedAt, endedAt} | {type:'error', message}

/** Perihelion's options in the bench (one process or workers): the limits that would throttle a load test, off. */
export const PERIHELION_LOAD_TEST_OPTIONS = {
  open: true, // any client may subscribe anywhere
  handshakeRate: 0, // no handshake rate limit per address (every client is 127.0.0.1)
  maxSessionsPerIp: 0, // no session cap per address
  maxWebsocketsPerIp: 0, // no WebSocket cap per address
  maxSubscriptionsPerIp: 0, // no subscription budget per address
  publishRate: 0, // no publish rate limit
  pingInterval: 0, // no WebSocket pings (the other servers' heartbeats are slower than a run)
};

/** Milliseconds on the machine's monotonic clock (shared by every process on the host). */
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/**
 * Listens on an ephemeral port of 127.0.0.1 (the bench never listens elsewhere) and resolves to
 * what `start` reports: the port and the path the subscribers connect to.
 */
export function listenOnLoopback(server, path) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ port: server.address().port, path }));
  });
}

const send = (message) => {
  if (process.connected) process.send(message);
};

/**
 * @param {object} server
 * @param {string} server.name
 * @param {() => Promise<{port: number, path: string, note?: string}>} server.start
 * @param {(key: string, data: object) => (void | Promise<unknown>)} server.publish  one message to every
 *     subscriber of the channel (Bayeux `/bench/<key>`) or room (Socket.IO `<key>`) named by key
 * @param {() => Promise<void>} server.stop
 * @param {() => {cpu: {user: number, system: number}, rss: number, heapUsed: number}} [server.usage]
 *     for a server that runs in processes of its own (Nchan): their CPU (µs) and memory, in place of this process's
 */
export async function runServer({ name, start, publish, stop, usage }) {
  if (!process.send) {
    console.error(`${name}: start me from bench/run.mjs (needs an IPC channel)`);
    process.exit(2);
  }
  // Without the parent there is nothing to do: never outlive it.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));

  const measure = usage ?? (() => ({ cpu: process.cpuUsage(), rss: process.memoryUsage().rss, heapUsed: process.memoryUsage().heapUsed }));
  let rssPeak = 0;
  const sampler = setInterval(() => {
    const { rss } = measure();
    if (rss > rssPeak) rssPeak = rss;
  }, 100);
  sampler.unref();

  let publishErrors = 0;
  let lastError = null;
  const publishOne = (key, data) => {
    try {
      const result = publish(key, data);
      if (result && typeof result.then === 'function') {
        result.then(undefined, (error) => {
          publishErrors++;
          lastError = String(error?.message ?? error);
        });
      }
    } catch (error) {
      publishErrors++;
      lastError = String(error?.message ?? error);
    }
  };

  const stats = ({ gc = false } = {}) => {
    // With --expose-gc, memory is measured after a full collection: live data, not garbage.
    if (gc && typeof globalThis.gc === 'function') globalThis.gc();
    const { cpu, rss, heapUsed } = measure();
    if (rss > rssPeak) rssPeak = rss;
    return { type: 'stats', at: nowMs(), cpu, rss, rssPeak, heapUsed };
  };

  /**
   * Publishes rate messages/s for duration s on an absolute schedule (late ticks catch up), in
   * ticks of `batch` messages; message `seq` goes to `keys[seq % keys.length]` (round-robin).
   *
   * Every message a tick publishes carries the time the tick began: they were all due then.
   * Stamping each as it is published would favour a server whose publish writes to every socket
   * before it returns (Socket.IO's emit, the floor): its tenth message would be stamped after the
   * first nine were written and its wait behind them never counted, while a server that queues
   * and writes after the call (Perihelion, Faye, Nchan's HTTP publisher) has it counted.
   */
  const run = ({ runId, rate, duration, keys, batch = 1 }) => {
    const total = Math.round(rate * duration);
    const interval = (1000 * batch) / rate;
    const errorsBefore = publishErrors;
    const startedAt = nowMs();
    let seq = 0;
    const tick = () => {
      const now = nowMs();
      while (seq < total && startedAt + (seq / batch) * interval <= now) {
        for (let i = 0; i < batch && seq < total; i++, seq++) publishOne(keys[seq % keys.length], { run: runId, seq, t: now });
      }
      if (seq < total) {
        setTimeout(tick, Math.max(0, startedAt + (seq / batch) * interval - nowMs()));
      } else {
        send({ type: 'published', runId, count: seq, errors: publishErrors - errorsBefore, lastError, startedAt, endedAt: nowMs() });
      }
    };
    tick();
  };

  process.on('message', async (message) => {
    try {
      switch (message.type) {
        case 'stats':
          send(stats({ gc: message.gc === true }));
          break;
        case 'probe':
          for (const key of message.keys) publishOne(key, { probe: message.id, t: nowMs() });
          send({ type: 'probed', id: message.id });
          break;
        case 'run':
          run(message);
          break;
        case 'close':
          await stop();
          process.exit(0);
      }
    } catch (error) {
      send({ type: 'error', message: String(error?.stack ?? error) });
    }
  });

  try {
    const address = await start();
    send({ ...stats(), ...address, type: 'ready' });
  } catch (error) {
    send({ type: 'error', message: String(error?.stack ?? error) });
    process.exit(1);
  }
}

/** One unmasked text frame (RFC 6455 §5.2): FIN + opcode 1, the length in 7, 16 or 64 bits, the UTF-8 of `text`. */
export function frameOf(text) {
  const body = Buffer.from(text);
  const n = body.length;
  const header = Buffer.alloc(n < 126 ? 2 : n < 65_536 ? 4 : 10);
  header[0] = 0x81;
  if (n < 126) {
    header[1] = n;
  } else if (n < 65_536) {
    header[1] = 126;
    header.writeUInt16BE(n, 2);
  } else {
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([header, body]);
}
