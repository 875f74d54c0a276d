/**
 * Server settings from the command line and the environment. Every option can be given as a
 * flag (`--max-queue 500`) or as `PERIHELION_<OPTION>` (`PERIHELION_MAX_QUEUE=500`); `PORT` and
 * `HOST` are honoured too (platform conventions). Flags win over the environment.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { OPTION_TABLE, PerihelionError, authenticateByCertificate, checkChannelRules, resolveOptions, type OptionSpec, type ServerOptions } from '@perihelion/server';
import { parse as parseYaml } from 'yaml';
import { readTls, type TlsFiles } from './tls.js';

export interface Setting {
  /** ServerOptions key, or a listen/CLI setting. */
  key: keyof ServerOptions | 'port' | 'host' | 'tlsCert' | 'tlsKey' | 'tlsCa' | 'tlsClientCert' | 'demo' | 'jwtPublicKey' | 'jwtAlgorithm' | 'jwks' | 'rules' | 'logLevel' | 'redis' | 'redisCluster' | 'redisPartitions' | 'redisPrefix' | 'redisHeartbeatInterval' | 'redisNodeTimeout' | 'redisNodeMessageInlineBytes' | 'workers';
  flag: string;
  kind: 'integer' | 'string' | 'list' | 'boolean' | 'file';
  help: string;
  /** For a boolean: on unless switched off (`--no-<flag>`). */
  on?: boolean;
}

/** Boolean settings that are on by default get a `--no-<flag>` switch; the others `--<flag>`. */
export function defaultsOn(setting: Setting): boolean {
  return setting.on === true;
}

const FLAG_KIND: Record<Exclude<OptionSpec['kind'], 'secret' | 'structured'>, Setting['kind']> = {
  integer: 'integer',
  boolean: 'boolean',
  choice: 'string',
  path: 'string',
  'connection-types': 'list',
  origins: 'list',
  addresses: 'list',
};

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** An option's default as `--help` and the README show it. */
export function shownDefault(spec: OptionSpec): string {
  if (spec.kind === 'structured') return spec.shown;
  if (spec.kind === 'secret') return 'none';
  if (spec.kind === 'path' && spec.shown !== undefined) return spec.shown;
  if (Array.isArray(spec.default)) return spec.default.length > 0 ? spec.default.join(',') : 'none';
  return String(spec.default);
}

/** The server options that `perihelion serve` takes as flags: every option of the table set by flag. */
function optionSettings(): Setting[] {
  const settings: Setting[] = [];
  for (const [key, spec] of Object.entries(OPTION_TABLE) as [keyof ServerOptions, OptionSpec][]) {
    if ((spec.set ?? 'flag') !== 'flag' || spec.kind === 'secret' || spec.kind === 'structured') continue;
    const help = `${spec.help.replace(/`/g, '')} (default ${shownDefault(spec)})`;
    settings.push({ key, flag: kebab(key), kind: FLAG_KIND[spec.kind], help, ...(spec.kind === 'boolean' && spec.default ? { on: true } : {}) });
  }
  return settings;
}

/** Settings of the command itself (where to listen, logs, the demo) and the CLI's ways to give structured options. */
const COMMAND_SETTINGS: Setting[] = [
  { key: 'port', flag: 'port', kind: 'integer', help: 'port to listen on (default 8080; also PORT)' },
  { key: 'host', flag: 'host', kind: 'string', help: 'interface to listen on (default: all; also HOST)' },
  { key: 'tlsCert', flag: 'tls-cert', kind: 'string', help: 'PEM file of the certificate chain: serve HTTPS and WSS (with --tls-key; SIGHUP reads both again, for a renewed certificate)' },
  { key: 'tlsKey', flag: 'tls-key', kind: 'string', help: "PEM file of the certificate's private key (its passphrase, if any, in PERIHELION_TLS_PASSPHRASE)" },
  { key: 'tlsClientCert', flag: 'tls-client-cert', kind: 'string', help: 'client certificates signed by --tls-ca: "require" (a client without one is refused in the TLS handshake) or "request" (it connects anonymous); without token settings a certificate\'s CN is its user' },
  { key: 'tlsCa', flag: 'tls-ca', kind: 'string', help: 'PEM file of the authorities that sign client certificates (with --tls-client-cert; SIGHUP reads it again)' },
  { key: 'redis', flag: 'redis', kind: 'string', help: 'cluster mode: Redis URL shared by every node, e.g. redis://127.0.0.1:6379 (default: in-memory engine, one process)' },
  { key: 'redisCluster', flag: 'redis-cluster', kind: 'boolean', help: 'cluster mode: --redis names nodes of a Redis Cluster (7 or later; comma-separated URLs), whose shards share the publishes (default false)' },
  { key: 'redisPartitions', flag: 'redis-partitions', kind: 'integer', help: 'cluster mode: partitions of the channels, spread over the shards; the same on every node (default 16 with --redis-cluster, else 1)' },
  { key: 'redisPrefix', flag: 'redis-prefix', kind: 'string', help: 'prefix of the Redis keys and channels, so that several clusters can share one Redis (default perihelion:)' },
  { key: 'redisHeartbeatInterval', flag: 'redis-heartbeat-interval', kind: 'integer', help: 'cluster mode: how often this node tells the others it is alive, ms (default 5000)' },
  { key: 'redisNodeTimeout', flag: 'redis-node-timeout', kind: 'integer', help: "cluster mode: silence after which a node counts as dead and the others remove its sessions, ms (default 15000; longer than the heartbeat interval)" },
  { key: 'redisNodeMessageInlineBytes', flag: 'redis-node-message-inline-bytes', kind: 'integer', help: 'cluster mode: a message for one other node (a forwarded reply, a relayed state snapshot) larger than this goes by way of a Redis key, not pub/sub, whose output buffer Redis bounds (default 65536; 0: every message through pub/sub)' },
  { key: 'workers', flag: 'workers', kind: 'string', help: 'processes serving one port as one server: a number, or auto for one per CPU this process may use (default 1; the demo gallery needs 1)' },
  { key: 'rules', flag: 'rules', kind: 'file', help: 'JSON file with the channel authorization rules, e.g. [{"channel":"/chat/**","publish":"authenticated"}]' },
  { key: 'jwtPublicKey', flag: 'jwt-public-key', kind: 'file', help: 'PEM file of the public key that signs tokens (the HMAC secret comes from PERIHELION_JWT_SECRET)' },
  { key: 'jwtAlgorithm', flag: 'jwt-algorithm', kind: 'string', help: 'algorithm of --jwt-public-key (default RS256)' },
  { key: 'jwks', flag: 'jwks', kind: 'file', help: 'JSON Web Key Set file of the keys that sign tokens' },
  { key: 'logLevel', flag: 'log-level', kind: 'string', help: 'JSON logs on stderr at this level: fatal, error, warn, info, debug, trace, silent (default info)' },
  { key: 'demo', flag: 'demo', kind: 'boolean', on: true, help: 'serve the demo landing page at / (default true)' },
];

/** Every flag of `perihelion serve`, each also `PERIHELION_<FLAG>` in the environment. */
export const SETTINGS: Setting[] = [...COMMAND_SETTINGS.slice(0, 4), ...optionSettings(), ...COMMAND_SETTINGS.slice(4)];

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Keys a configuration file may hold besides the server options. */
const FILE_ONLY_KEYS = new Set(['port', 'host', 'tlsCert', 'tlsKey', 'tlsCa', 'tlsClientCert', 'demo', 'logLevel', 'redis', 'redisCluster', 'redisPartitions', 'redisPrefix', 'redisHeartbeatInterval', 'redisNodeTimeout', 'redisNodeMessageInlineBytes', 'workers']);

/** Most workers `--workers` takes. */
export const MAX_WORKERS = 256;

/** `--workers`: a whole number from 1 to MAX_WORKERS, or "auto" (one per CPU this process may use). */
function parseWorkers(value: unknown, source: string): number {
  if (value === 'auto') return availableParallelism();
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_WORKERS) throw new SettingsError(`${source} must be a number of processes from 1 to ${MAX_WORKERS}, or auto, got ${JSON.stringify(value)}`);
  return n;
}

export function envName(setting: Setting): string {
  return `PERIHELION_${setting.flag.replace(/-/g, '_').toUpperCase()}`;
}

export class SettingsError extends Error {}

function convert(setting: Setting, raw: string, source: string): unknown {
  switch (setting.kind) {
    case 'integer': {
      if (!/^\d+$/.test(raw.trim())) throw new SettingsError(`${source} must be a whole number, got ${JSON.stringify(raw)}`);
      return Number(raw.trim());
    }
    case 'list':
      return raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
    case 'boolean': {
      const value = raw.trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(value)) return true;
      if (['0', 'false', 'no', 'off'].includes(value)) return false;
      throw new SettingsError(`${source} must be true or false, got ${JSON.stringify(raw)}`);
    }
    case 'file':
      try {
        return readFileSync(raw, 'utf8');
      } catch (error) {
        throw new SettingsError(`${source}: cannot read ${JSON.stringify(raw)} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      }
    default:
      return raw;
  }
}

function parseJson(text: string, source: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SettingsError(`${source} is not valid JSON (${(error as Error).message})`);
  }
}

export interface Settings {
  server: ServerOptions;
  port: number;
  host: string | undefined;
  demo: boolean;
  /** Default: info. */
  logLevel?: LogLevel;
  /** Redis URL: cluster mode with the Redis engine. Default: the in-memory engine. */
  redis?: string;
  /** `redis` names nodes of a Redis Cluster. */
  redisCluster?: boolean;
  /** Partitions of the Redis engine's channels. */
  redisPartitions?: number;
  /** Key prefix of the Redis engine. */
  redisPrefix?: string;
  /** The Redis engine's node liveness, ms. */
  redisHeartbeatInterval?: number;
  redisNodeTimeout?: number;
  /** The Redis engine's `nodeMessageInlineBytes`: larger messages for one node go by way of a key. */
  redisNodeMessageInlineBytes?: number;
  /** Processes serving the port as one server (default 1: this process only). */
  workers?: number;
  /** HTTPS and WSS: where the certificate and key are (read at start and on SIGHUP), and the key's passphrase. */
  tls?: TlsFiles;
}

/**
 * Reads a configuration file (JSON, or YAML for .yaml/.yml): the server options by their
 * names (`maxQueue`, `channels`, …) plus port, host, demo and logLevel. Unknown keys and wrong
 * types are errors naming the key; secrets belong in the environment, not here.
 */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new SettingsError(`--config: cannot read ${JSON.stringify(path)} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  let value: unknown;
  try {
    value = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (error) {
    throw new SettingsError(`${path} is not valid ${/\.ya?ml$/i.test(path) ? 'YAML' : 'JSON'} (${(error as Error).message.split('\n')[0]})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new SettingsError(`${path} must hold an object of settings`);
  const config = value as Record<string, unknown>;
  // `engine` is the option behind --redis in the table of options, but its value is an engine
  // object, which a file cannot hold: the file names the Redis URL, as the flag does.
  if (Object.hasOwn(config, 'engine')) {
    throw new SettingsError(`${path}: setting "engine" takes an engine object, which only code can give (createServer); for cluster mode write "redis": "redis://127.0.0.1:6379", the setting behind --redis`);
  }
  for (const key of Object.keys(config)) {
    const spec = (OPTION_TABLE as Record<string, OptionSpec>)[key];
    if (spec?.set === 'code') throw new SettingsError(`${path}: setting "${key}" can only be given in code (createServer), not in a configuration file`);
  }
  const server: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(config)) {
    if (FILE_ONLY_KEYS.has(key)) continue;
    server[key] = item;
  }
  try {
    resolveOptions(server as ServerOptions);
  } catch (error) {
    if (!(error instanceof PerihelionError)) throw error;
    const also = error.message.startsWith('unknown option') ? `, ${[...FILE_ONLY_KEYS].join(', ')}` : '';
    throw new SettingsError(`${path}: ${error.message}${also}`);
  }
  if (config.port !== undefined && (typeof config.port !== 'number' || !Number.isInteger(config.port))) throw new SettingsError(`${path}: setting "port" must be a whole number`);
  if (config.host !== undefined && typeof config.host !== 'string') throw new SettingsError(`${path}: setting "host" must be a string`);
  if (config.demo !== undefined && typeof config.demo !== 'boolean') throw new SettingsError(`${path}: setting "demo" must be true or false`);
  if (config.redisCluster !== undefined && typeof config.redisCluster !== 'boolean') throw new SettingsError(`${path}: setting "redisCluster" must be true or false`);
  for (const key of ['redis', 'redisPrefix', 'tlsCert', 'tlsKey', 'tlsCa', 'tlsClientCert']) {
    if (config[key] !== undefined && typeof config[key] !== 'string') throw new SettingsError(`${path}: setting "${key}" must be a string${key === 'redis' ? ' like "redis://127.0.0.1:6379"' : ''}`);
  }
  return config;
}

/** Merges flags (already parsed as strings or booleans) over the environment over defaults. */
export function resolveSettings(flags: Record<string, unknown>, env: NodeJS.ProcessEnv): Settings {
  const configPath = typeof flags.config === 'string' ? flags.config : env.PERIHELION_CONFIG;
  // Precedence: flags, then the environment, then the configuration file, then the defaults.
  const values: Record<string, unknown> = configPath ? { ...readConfigFile(configPath) } : {};
  /** What the user typed for each server option given by a flag or the environment, to name it in a refusal. */
  const sources: Record<string, string> = {};
  if (env.PORT !== undefined && env.PORT !== '') values.port = convert(COMMAND_SETTINGS[0]!, env.PORT, 'PORT');
  if (env.HOST !== undefined && env.HOST !== '') values.host = env.HOST;
  for (const setting of SETTINGS) {
    const name = envName(setting);
    const fromEnv = env[name];
    if (fromEnv !== undefined && fromEnv !== '') {
      values[setting.key] = convert(setting, fromEnv, name);
      sources[setting.key] = name;
    }
    const fromFlag = flags[camel(setting.flag)];
    if (typeof fromFlag === 'string') values[setting.key] = convert(setting, fromFlag, `--${setting.flag}`);
    else if (typeof fromFlag === 'boolean' && setting.kind === 'boolean') values[setting.key] = fromFlag;
    if (typeof fromFlag === 'string' || typeof fromFlag === 'boolean') sources[setting.key] = `--${setting.flag}`;
  }
  const { port = 8080, host, tlsCert, tlsKey, tlsCa, tlsClientCert, demo = true, logLevel = 'info', jwtPublicKey, jwtAlgorithm, jwks, rules, redis, redisCluster, redisPartitions, redisPrefix, redisHeartbeatInterval, redisNodeTimeout, redisNodeMessageInlineBytes, workers = 1, ...server } = values;
  if (!(LOG_LEVELS as readonly unknown[]).includes(logLevel)) throw new SettingsError(`log level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  if (typeof port !== 'number' || port > 65535) throw new SettingsError(`port must be from 0 to 65535, got ${String(port)}`);
  const options = server as ServerOptions;
  // Signed-token keys: the HMAC secret only from the environment, so it never shows in `ps`.
  const secret = env.PERIHELION_JWT_SECRET;
  const keys = [secret, jwtPublicKey, jwks].filter((k) => k !== undefined && k !== '');
  if (keys.length > 1) throw new SettingsError('give one token key: PERIHELION_JWT_SECRET, --jwt-public-key or --jwks');
  if (secret !== undefined && secret !== '') options.jwt = { secret };
  else if (typeof jwtPublicKey === 'string') options.jwt = { publicKey: jwtPublicKey, ...(typeof jwtAlgorithm === 'string' ? { algorithm: jwtAlgorithm } : {}) };
  else if (typeof jwks === 'string') options.jwt = { jwks: parseJson(jwks, '--jwks') as never };
  if (options.jwt !== undefined) checkTokenKey(options.jwt);
  if (typeof rules === 'string') {
    const list = parseJson(rules, '--rules');
    // The command adds its own rules to these (serve.ts): anything but a list would not even reach the server's checks.
    if (!Array.isArray(list)) {
      throw new SettingsError(`--rules must be a JSON list of rules, like [{"channel": "/chat/**", "publish": "authenticated"}], got ${list === null ? 'null' : typeof list === 'object' ? 'an object' : `a ${typeof list}`}`);
    }
    options.channels = list as never;
  }
  if (options.channels !== undefined) {
    // Checked here, alone: the command adds rules of its own ahead of them (serve.ts), and the
    // server's message would count those too.
    try {
      checkChannelRules(options.channels);
    } catch (error) {
      if (!(error instanceof PerihelionError)) throw error;
      const source = typeof rules === 'string' ? '--rules' : '"channels" (the rules in the configuration file)';
      throw new SettingsError(`${source}: ${error.message.replace(/^option "channels": /, '')} (rules counted from 0)`);
    }
  }
  // The HTTP API key, like the token secret, comes from the environment (or the file).
  if (env.PERIHELION_API_KEY !== undefined && env.PERIHELION_API_KEY !== '') {
    options.apiKey = env.PERIHELION_API_KEY;
    sources.apiKey = 'PERIHELION_API_KEY';
  }
  checkServerOptions(options, sources);
  for (const [value, flag] of [
    [redisCluster, '--redis-cluster'],
    [redisPartitions, '--redis-partitions'],
    [redisPrefix, '--redis-prefix'],
    [redisHeartbeatInterval, '--redis-heartbeat-interval'],
    [redisNodeTimeout, '--redis-node-timeout'],
    [redisNodeMessageInlineBytes, '--redis-node-message-inline-bytes'],
  ] as const) {
    if (value !== undefined && redis === undefined) throw new SettingsError(`${flag} needs --redis (the Redis URL of the cluster)`);
  }
  if (redisPartitions !== undefined && (typeof redisPartitions !== 'number' || !Number.isInteger(redisPartitions) || redisPartitions < 1 || redisPartitions > 1024)) {
    throw new SettingsError(`setting "redisPartitions" must be a whole number from 1 to 1024, got ${JSON.stringify(redisPartitions)}`);
  }
  for (const [key, value] of [
    ['redisHeartbeatInterval', redisHeartbeatInterval],
    ['redisNodeTimeout', redisNodeTimeout],
  ] as const) {
    if (value !== undefined && (typeof value !== 'number' || !Number.isInteger(value))) throw new SettingsError(`setting "${key}" must be a whole number of ms`);
  }
  // Its range is the engine's to check (at start, with the engine's message).
  if (redisNodeMessageInlineBytes !== undefined && (typeof redisNodeMessageInlineBytes !== 'number' || !Number.isInteger(redisNodeMessageInlineBytes))) {
    throw new SettingsError('setting "redisNodeMessageInlineBytes" must be a whole number of bytes');
  }
  if ((tlsClientCert !== undefined || tlsCa !== undefined) && tlsCert === undefined) {
    throw new SettingsError(`${tlsClientCert !== undefined ? '--tls-client-cert' : '--tls-ca'} needs --tls-cert and --tls-key: client certificates are asked for in the server's own TLS handshake`);
  }
  // A client certificate names its user, unless tokens do (then it only lets the client connect).
  if (tlsClientCert !== undefined && options.jwt === undefined) options.authenticate = authenticateByCertificate;
  let tls: TlsFiles | undefined;
  if (tlsCert !== undefined || tlsKey !== undefined) {
    if (typeof tlsCert !== 'string' || typeof tlsKey !== 'string') throw new SettingsError(`${tlsCert === undefined ? '--tls-key needs --tls-cert' : '--tls-cert needs --tls-key'}: HTTPS takes the certificate and its private key`);
    const passphrase = env.PERIHELION_TLS_PASSPHRASE;
    tls = { cert: tlsCert, key: tlsKey, ...(passphrase !== undefined && passphrase !== '' ? { passphrase } : {}), ...clientCertificateFiles(tlsClientCert, tlsCa) };
    // Read and checked now, before any worker is forked (each reads them again as it starts).
    readTls(tls);
  }
  return {
    server: options,
    port,
    host: host as string | undefined,
    demo: demo as boolean,
    logLevel: logLevel as LogLevel,
    ...(typeof redis === 'string' ? { redis } : {}),
    ...(redisCluster === true ? { redisCluster } : {}),
    ...(typeof redisPartitions === 'number' ? { redisPartitions } : {}),
    ...(typeof redisPrefix === 'string' ? { redisPrefix } : {}),
    ...(typeof redisHeartbeatInterval === 'number' ? { redisHeartbeatInterval } : {}),
    ...(typeof redisNodeTimeout === 'number' ? { redisNodeTimeout } : {}),
    ...(typeof redisNodeMessageInlineBytes === 'number' ? { redisNodeMessageInlineBytes } : {}),
    workers: parseWorkers(workers, 'workers (--workers, PERIHELION_WORKERS)'),
    ...(tls ? { tls } : {}),
  };
}

/** `--tls-client-cert` and `--tls-ca`, checked: both or neither, the first "request" or "require". */
function clientCertificateFiles(mode: unknown, ca: unknown): Pick<TlsFiles, 'ca' | 'clientCertificates'> {
  if (mode === undefined && ca === undefined) return {};
  if (mode !== 'request' && mode !== 'require') {
    throw new SettingsError(mode === undefined ? '--tls-ca is the authority of client certificates: give --tls-client-cert require (or request) too' : `--tls-client-cert is "require" or "request", got ${JSON.stringify(mode)}`);
  }
  if (typeof ca !== 'string') throw new SettingsError(`--tls-client-cert ${mode} needs --tls-ca: the PEM file of the authorities that sign the client certificates`);
  return { ca, clientCertificates: mode };
}

/**
 * The server's own checks, here so that a refusal names what the user typed (`--max-queue`,
 * `PERIHELION_API_KEY`) rather than the option's name in code, and comes before any worker is
 * forked. A value from the configuration file was checked, and named, as the file was read.
 */
function checkServerOptions(options: ServerOptions, sources: Record<string, string>): void {
  try {
    resolveOptions(options);
  } catch (error) {
    if (!(error instanceof PerihelionError)) throw error;
    const named = /^option "([A-Za-z]+)"(:?)/.exec(error.message);
    const source = named ? sources[named[1]!] : undefined;
    if (named === null || source === undefined) throw error;
    throw new SettingsError(`${source}${named[2]}${error.message.slice(named[0].length)}`);
  }
}

/** Where each part of the `jwt` option comes from on the command line. */
const JWT_SOURCES: Record<string, string> = {
  secret: 'PERIHELION_JWT_SECRET',
  publicKey: '--jwt-public-key',
  algorithm: '--jwt-algorithm',
  jwks: '--jwks',
};

/**
 * A token key that could verify nothing (a file that is not a public key, an algorithm it does
 * not fit) stops the command here, named by its flag, as the server's own check would at start.
 */
function checkTokenKey(jwt: NonNullable<ServerOptions['jwt']>): void {
  try {
    resolveOptions({ jwt });
  } catch (error) {
    if (!(error instanceof PerihelionError)) throw error;
    throw new SettingsError(error.message.replace(/(?:option )?"jwt\.(\w+)"/g, (whole, part: string) => JWT_SOURCES[part] ?? whole));
  }
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
