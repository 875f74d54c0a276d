// The bench's command line: its options, their defaults and checks, the usage text, and the
// scenarios as the options shape them (--subscribers, --rates and --idle-sizes override a
// scenario's own numbers).
import { DEFAULT_SCENARIOS, SCENARIOS } from './scenarios.mjs';
import { nchanInstalled } from './servers/nchan-install.mjs';

/**
 * Every server the bench can run, by its --servers name. perihelion-workers (Perihelion as
 * `perihelion serve --workers N`, N from BENCH_WORKERS) runs only when named.
 */
export const LABELS = {
  perihelion: 'Perihelion',
  'perihelion-workers': `Perihelion, ${process.env.BENCH_WORKERS || 2} worker${(process.env.BENCH_WORKERS || '2') === '1' ? '' : 's'}`,
  faye: 'Faye 1.4',
  socketio: 'Socket.IO 4',
  nchan: 'Nchan 1.3',
  floor: 'Node floor',
  'floor-bayeux': 'Bayeux floor',
};

const USAGE = `usage: npm run bench -- [options]

  --scenarios LIST       any of ${Object.keys(SCENARIOS).join(',')} (default all)
  --subscribers N        subscribers per server in every load scenario (default: the scenario's)
  --rates A,B,C          publish rates to step through, messages/s (default: the scenario's)
  --idle-sizes A,B,C     connection counts of the idle scenario (default 1000,5000,19000)
  --duration S           seconds of publishing per rate (default 5)
  --settle S             idle scenario: seconds to wait after the last connection before memory is measured (default 12)
  --idle-warmup N        idle scenario: connections set up before the measured ones, and not counted (default 500; 0 for none)
  --drain S              longest wait for stragglers after the last publish, s (default 5)
  --warmup S             load scenarios: seconds of publishing at the first rate before anything is measured (default 3; 0 for none)
  --servers LIST         any of perihelion,faye,socketio,nchan,floor,floor-bayeux (default all, in that order; nchan
                         only when installed: apt-get install nginx-light libnginx-mod-nchan). floor is not a peer
                         but a reference: a bare ws server, the least any Node server spends; floor-bayeux, in the
                         idle scenario only, the least a Bayeux server on ws does to set up (see bench/README.md).
                         Also perihelion-workers, only when named: Perihelion as \`perihelion serve --workers N\`
                         (a primary with the broker and N node:cluster workers; N = BENCH_WORKERS, default 2)
  --socketio-client K    raw (Engine.IO protocol over a WebSocket, default) or official (socket.io-client)
  --ws-client K          the subscribers' WebSocket: raw (a minimal RFC 6455 client on a TCP socket, default) or ws
  --connect-timeout S    per-client setup timeout, s (default 15)
  --concurrency K        clients being set up at once (default 50)
  --rounds R             repeat the whole sequence R times, server order rotated; the table shows medians (default 1)
  --deadline S           the whole run's deadline, s (default 1800 per round: a full round takes about 17 minutes)
  --results FILE         where to write the Markdown report (default bench/RESULTS.md; "-" for none)
  --json FILE            also write every measurement as JSON (for scripts such as the CI guard)
  --redis URL            the Redis of the cluster scenario (default redis://127.0.0.1:6379)
  --no-pin               do not pin with taskset
  --cpu-prof DIR         write a V8 CPU profile of each server to DIR (open it in Chrome DevTools)
`;

/** The options of this invocation; a wrong option prints the usage and exits with status 2. */
export function parseArgs(argv) {
  const options = {
    scenarios: DEFAULT_SCENARIOS,
    subscribers: null,
    rates: null,
    idleSizes: null,
    json: null,
    redis: 'redis://127.0.0.1:6379',
    duration: 5,
    drain: 5,
    warmup: 3,
    settle: 12,
    idleWarmup: 500,
    servers: nchanInstalled() ? ['perihelion', 'faye', 'socketio', 'nchan', 'floor', 'floor-bayeux'] : ['perihelion', 'faye', 'socketio', 'floor', 'floor-bayeux'],
    socketioClient: 'raw',
    wsClient: 'raw',
    connectTimeout: 15,
    concurrency: 50,
    rounds: 1,
    deadline: null,
    results: 'bench/RESULTS.md',
    pin: true,
    cpuProf: null,
  };
  const number = (name, value, { min = 0, integer = false } = {}) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) usage(`--${name} needs a number ≥ ${min}, got ${JSON.stringify(value)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--scenarios': {
        const list = value().split(',').filter(Boolean);
        for (const name of list) if (!SCENARIOS[name]) usage(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(SCENARIOS).join(', ')}`);
        if (list.length === 0) usage('--scenarios needs at least one scenario');
        options.scenarios = list;
        break;
      }
      case '--idle-sizes':
        options.idleSizes = value()
          .split(',')
          .filter(Boolean)
          .map((n) => number('idle-sizes', n, { min: 1, integer: true }));
        break;
      case '--idle-warmup':
        options.idleWarmup = number('idle-warmup', value(), { min: 0, integer: true });
        break;
      case '--json':
        options.json = value();
        break;
      case '--redis':
        options.redis = value();
        break;
      case '--subscribers':
        options.subscribers = number('subscribers', value(), { min: 1, integer: true });
        break;
      case '--rates':
        options.rates = value()
          .split(',')
          .filter(Boolean)
          .map((r) => number('rates', r, { min: 0.1 }));
        if (options.rates.length === 0) usage('--rates needs at least one rate');
        break;
      case '--cpu-prof':
        options.cpuProf = value();
        break;
      case '--duration':
        options.duration = number('duration', value(), { min: 0.5 });
        break;
      case '--settle':
        options.settle = number('settle', value(), { min: 0 });
        break;
      case '--drain':
        options.drain = number('drain', value(), { min: 0 });
        break;
      case '--warmup':
        options.warmup = number('warmup', value(), { min: 0 });
        break;
      case '--servers': {
        const list = value().split(',').filter(Boolean);
        for (const s of list) if (!Object.hasOwn(LABELS, s)) usage(`unknown server ${JSON.stringify(s)}`);
        if (list.includes('nchan') && !nchanInstalled()) usage('nchan is not installed: apt-get install nginx-light libnginx-mod-nchan');
        if (list.length === 0) usage('--servers needs at least one server');
        options.servers = list;
        break;
      }
      case '--socketio-client': {
        const kind = value();
        if (kind !== 'raw' && kind !== 'official') usage('--socketio-client is raw or official');
        options.socketioClient = kind;
        break;
      }
      case '--ws-client': {
        const kind = value();
        if (kind !== 'raw' && kind !== 'ws') usage('--ws-client is raw or ws');
        options.wsClient = kind;
        break;
      }
      case '--connect-timeout':
        options.connectTimeout = number('connect-timeout', value(), { min: 1 });
        break;
      case '--concurrency':
        options.concurrency = number('concurrency', value(), { min: 1, integer: true });
        break;
      case '--rounds':
        options.rounds = number('rounds', value(), { min: 1, integer: true });
        break;
      case '--deadline':
        options.deadline = number('deadline', value(), { min: 10 });
        break;
      case '--results':
        options.results = value();
        break;
      case '--no-pin':
        options.pin = false;
        break;
      case '-h':
      case '--help':
        process.stdout.write(USAGE);
        process.exit(0);
      default:
        usage(`unknown option ${JSON.stringify(arg)}`);
    }
  }
  options.deadline ??= 1800 * options.rounds;
  return options;
}

function usage(problem) {
  process.stderr.write(`bench: ${problem}\n\n${USAGE}`);
  process.exit(2);
}

/** The scenario with the command line's overrides applied. */
export function scenarioOf(options, id) {
  const base = SCENARIOS[id];
  if (base.kind === 'idle') return { id, ...base, sizes: options.idleSizes ?? base.sizes };
  const clients = options.subscribers ?? base.clients;
  const title = clients === base.clients ? base.title : `${base.title} — run with ${clients} clients (--subscribers)`;
  return { id, ...base, title, clients, rates: options.rates ?? base.rates };
}
