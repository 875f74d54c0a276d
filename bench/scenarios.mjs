// The benchmark's scenarios. Each server runs each scenario with the same subscribers, the same
// publisher (inside the server process) and the same schedule.
//
// A load scenario says how many clients there are, which channels (Socket.IO: rooms) client i
// subscribes to, which transport they use, and what the publisher does: `rate` messages per
// second, in ticks of `batch` messages, message `seq` going to `keys[seq % keys.length]`.

const range = (n, name) => Array.from({ length: n }, (_, i) => name(i));

/** Why servers sit out the cluster scenarios. */
const CLUSTER_SKIPS = {
  faye: "faye-redis 0.2, Faye's Redis engine, needs the callback API of redis clients long gone from npm",
  nchan: 'nginx with Nchan on Redis is not set up by the bench',
  floor: 'the floor has no cluster mode',
  'perihelion-workers': 'its workers share the broker of one machine, not Redis: the cluster scenarios run Perihelion with --redis',
};

/**
 * The scenarios a server runs in when it does not run in all of them, and why not elsewhere.
 * A scenario's own `servers` list (below) narrows it further.
 */
const ONLY_IN = {
  'floor-bayeux': {
    scenarios: ['idle'],
    why: 'the Bayeux floor is the reference for the set-up; in delivery it writes the frames the Node floor writes',
  },
};

/** Why `name` sits out `scenario`, or null when it runs in it. */
export function sitsOut(scenario, name) {
  const only = ONLY_IN[name];
  if (only && !only.scenarios.includes(scenario.id)) return only.why;
  if (scenario.servers && !scenario.servers.includes(name)) return scenario.skips?.[name] ?? 'not supported';
  return null;
}

/** Fan-out over three nodes: 1 000 WebSocket subscribers of one channel spread over them. */
const CLUSTER_FANOUT = {
  kind: 'load',
  transport: 'websocket',
  cluster: 3,
  clients: 1000,
  rates: [20, 50],
  channelsOf: () => ['fanout'],
  keys: ['fanout'],
  batch: 1,
};

export const SCENARIOS = {
  idle: {
    kind: 'idle',
    title: 'idle WebSocket subscribers: memory per connection and connect rate',
    transport: 'websocket',
    // The machine allows 20 000 open files per process, and the server holds one per connection:
    // 19 000 is as close to 20 000 as it gets.
    sizes: [1000, 5000, 19_000],
  },
  fanout: {
    kind: 'load',
    title: 'fan-out: 1 000 WebSocket subscribers on one channel',
    transport: 'websocket',
    clients: 1000,
    rates: [20, 50, 100],
    channelsOf: () => ['fanout'],
    keys: ['fanout'],
    batch: 1,
  },
  fanout5k: {
    kind: 'load',
    title: 'fan-out: 5 000 WebSocket subscribers on one channel',
    transport: 'websocket',
    clients: 5000,
    rates: [10, 20],
    channelsOf: () => ['fanout'],
    keys: ['fanout'],
    batch: 1,
  },
  channels: {
    kind: 'load',
    title: 'many channels: 1 000 WebSocket subscribers, one channel each, round-robin publisher',
    transport: 'websocket',
    clients: 1000,
    rates: [1000, 5000],
    channelsOf: (i) => [`c${i}`],
    keys: range(1000, (i) => `c${i}`),
    batch: 1,
  },
  longpoll: {
    kind: 'load',
    title: 'long-polling fan-out: 1 000 long-polling subscribers on one channel',
    transport: 'long-polling',
    clients: 1000,
    rates: [20, 50, 100],
    channelsOf: () => ['fanout'],
    keys: ['fanout'],
    batch: 1,
    // The floor here is the least a Bayeux long-polling server on node:http does (servers/floor.mjs).
    servers: ['perihelion', 'perihelion-workers', 'faye', 'socketio', 'floor'],
    skips: {
      nchan: "Nchan's long-polling subscribers speak a protocol of their own (If-Modified-Since/If-None-Match), which the generator does not speak",
    },
  },
  chat: {
    kind: 'load',
    title: 'chat (the CometD benchmark shape): 100 rooms, each of 1 000 WebSocket clients in 10, batches of 10 messages',
    transport: 'websocket',
    clients: 1000,
    rates: [200, 500],
    // Client i is in rooms i, i+10, …, i+90 (mod 100): every room has clients/10 members.
    channelsOf: (i) => range(10, (j) => `room${(i + 10 * j) % 100}`),
    keys: range(100, (i) => `room${i}`),
    batch: 10,
    servers: ['perihelion', 'perihelion-workers', 'faye', 'socketio', 'nchan'],
    skips: { floor: 'the floor writes each message as it comes, with no batching: it is no floor for batches' },
  },
  cluster: {
    ...CLUSTER_FANOUT,
    title: 'cluster: fan-out over three nodes sharing one Redis, 1 000 WebSocket subscribers spread over them, the publisher on the first',
    servers: ['perihelion', 'socketio'],
    skips: CLUSTER_SKIPS,
  },
  clusterrc: {
    ...CLUSTER_FANOUT,
    title: 'cluster past one Redis: the cluster scenario on a Redis Cluster of three shards (started by the bench), 1 000 WebSocket subscribers spread over three nodes, the publisher on the first',
    redisCluster: true,
    servers: ['perihelion'],
    skips: { ...CLUSTER_SKIPS, socketio: "Socket.IO's sharded Redis adapter needs the node-redis client, which the bench does not use" },
  },
  clusterrr: {
    kind: 'load',
    title: 'cluster without affinity: long-polling over three nodes sharing one Redis, each client sending each request to the next node in turn (a round-robin balancer), 1 000 clients, the publisher on the first',
    transport: 'long-polling',
    cluster: 3,
    roundRobin: true,
    clients: 1000,
    rates: [20, 50],
    channelsOf: () => ['fanout'],
    keys: ['fanout'],
    batch: 1,
    servers: ['perihelion'],
    skips: { ...CLUSTER_SKIPS, socketio: "Socket.IO's long-polling needs sticky sessions (its documentation says so): without them its requests fail" },
  },
};

export const DEFAULT_SCENARIOS = ['idle', 'fanout', 'fanout5k', 'channels', 'longpoll', 'chat', 'cluster', 'clusterrc', 'clusterrr'];

/** Deliveries expected when `count` messages were published: Σ over seq of the subscribers of its key. */
export function expectedDeliveries(scenario, subscribersByKey, count) {
  const perCycle = scenario.keys.reduce((sum, key) => sum + (subscribersByKey.get(key) ?? 0), 0);
  const cycles = Math.floor(count / scenario.keys.length);
  let rest = 0;
  for (let i = 0; i < count % scenario.keys.length; i++) rest += subscribersByKey.get(scenario.keys[i]) ?? 0;
  return cycles * perCycle + rest;
}
