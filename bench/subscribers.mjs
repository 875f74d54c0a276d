// The subscribers of a run: the right client for each server and transport, set up many at a time.
import { bayeuxLongPollSubscriber, bayeuxSubscriber, nchanSubscriber, socketIoOfficialSubscriber, socketIoPollingSubscriber, socketIoRawSubscriber } from './clients.mjs';
import { log } from './log.mjs';

/**
 * A function (common, i) => the subscriber i of `scenario` on server `name` at 127.0.0.1:port;
 * socketioClient: 'raw' or 'official' (--socketio-client). `port` may be a list of ports (a
 * cluster without affinity): a long-polling client then sends each request to the next one.
 */
export function subscriberFactory(name, port, path, scenario, { socketioClient }) {
  const ports = Array.isArray(port) ? port : [port];
  const base = `127.0.0.1:${ports[0]}`;
  const polling = scenario.transport === 'long-polling';
  if (name === 'socketio') {
    if (polling) return (common, i) => socketIoPollingSubscriber({ ...common, url: `http://${base}/socket.io/?EIO=4&transport=polling`, rooms: scenario.channelsOf(i), event: 'fanout' });
    return socketioClient === 'official'
      ? (common, i) => socketIoOfficialSubscriber({ ...common, url: `ws://${base}`, rooms: scenario.channelsOf(i), event: 'fanout' })
      : (common, i) => socketIoRawSubscriber({ ...common, url: `ws://${base}/socket.io/?EIO=4&transport=websocket`, rooms: scenario.channelsOf(i), event: 'fanout' });
  }
  // The floor speaks Nchan's subscriber protocol over WebSocket (the open WebSocket is the
  // subscription) and Bayeux over long-polling (see servers/floor.mjs).
  if (name === 'nchan' || (name === 'floor' && !polling)) return (common, i) => nchanSubscriber({ ...common, url: `ws://${base}${path}`, channels: scenario.channelsOf(i) });
  const channels = (i) => scenario.channelsOf(i).map((key) => `/bench/${key}`);
  if (polling) return (common, i) => bayeuxLongPollSubscriber({ ...common, urls: ports.map((p) => `http://127.0.0.1:${p}${path}`), channels: channels(i) });
  // The Bayeux floor is set up as Perihelion is: one frame each way (servers/floor-bayeux.mjs).
  return (common, i) => bayeuxSubscriber({ ...common, url: `ws://${base}${path}`, channels: channels(i), bundle: name === 'perihelion' || name === 'floor-bayeux' });
}

/** Sets up n clients, `concurrency` at a time; each client remembers its index (its channels). */
export async function connectAll(name, factory, recorder, n, { concurrency, connectTimeout }) {
  const clients = [];
  const errors = new Map();
  let started = 0;
  let done = 0;
  const step = Math.max(1, Math.round(n / 5));
  const t0 = Date.now();
  log(`${name}: connecting ${n} clients (${concurrency} at a time, ${connectTimeout} s each)…`);
  const worker = async () => {
    while (started < n) {
      const index = started++;
      try {
        const client = await factory({ recorder, timeoutMs: connectTimeout * 1000 }, index);
        client.index = index;
        clients.push(client);
      } catch (error) {
        const key = String(error?.message ?? error);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
      done++;
      if (done % step === 0 || done === n) log(`${name}:   ${done}/${n} set up (${clients.length} subscribed, ${done - clients.length} failed) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return { clients, errors, seconds: (Date.now() - t0) / 1000 };
}

/** Subscribers per channel key among the clients still alive. */
export function subscribersByKey(scenario, clients) {
  const counts = new Map();
  for (const client of clients) {
    if (client.failed) continue;
    for (const key of scenario.channelsOf(client.index)) counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}
