/**
 * Server settings from the command line and the environment. Every option can be given as a
 * flag (`--max-queue 500`) or as `PERIHELION_<OPTION>` (`PERIHELION_MAX_QUEUE=500`); `PORT` and
 * `HOST` are honoured too (platform conventions). Flags win over the environment.
 */
import { readFileSync } from 'node:fs';
import type { ServerOptions } from '@perihelion/server';

export interface Setting {
  /** ServerOptions key, or a listen/CLI setting. */
  key: keyof ServerOptions | 'port' | 'host' | 'demo' | 'jwtPublicKey' | 'jwtAlgorithm' | 'jwks' | 'rules';
  flag: string;
  kind: 'integer' | 'string' | 'list' | 'boolean' | 'file';
  help: string;
}

/** Boolean settings that are on by default get a `--no-<flag>` switch; the others `--<flag>`. */
export function defaultsOn(setting: Setting): boolean {
  return setting.key === 'demo' || setting.key === 'anonymous';
}

export const SETTINGS: Setting[] = [
  { key: 'port', flag: 'port', kind: 'integer', help: 'port to listen on (default 8080; also PORT)' },
  { key: 'host', flag: 'host', kind: 'string', help: 'interface to listen on (default: all; also HOST)' },
  { key: 'path', flag: 'path', kind: 'string', help: 'mount path of the Bayeux endpoint (default /bayeux)' },
  { key: 'timeout', flag: 'timeout', kind: 'integer', help: 'longest hold of a /meta/connect, ms (default 30000)' },
  { key: 'interval', flag: 'interval', kind: 'integer', help: 'pause between connects advised to clients, ms (default 0)' },
  { key: 'maxInterval', flag: 'max-interval', kind: 'integer', help: 'silence after which a session is swept, ms (default 10000)' },
  { key: 'maxQueue', flag: 'max-queue', kind: 'integer', help: 'messages queued per session before the oldest is dropped (default 1000)' },
  { key: 'maxRequestBytes', flag: 'max-request-bytes', kind: 'integer', help: 'largest request body or WebSocket frame (default 1048576)' },
  { key: 'maxBatch', flag: 'max-batch', kind: 'integer', help: 'most messages per request (default 100)' },
  { key: 'maxDepth', flag: 'max-depth', kind: 'integer', help: 'deepest JSON nesting (default 32)' },
  { key: 'maxSubscriptions', flag: 'max-subscriptions', kind: 'integer', help: 'most subscriptions per session (default 1000)' },
  { key: 'maxChannelLength', flag: 'max-channel-length', kind: 'integer', help: 'longest channel name (default 1024)' },
  { key: 'pingInterval', flag: 'ping-interval', kind: 'integer', help: 'WebSocket ping interval, ms; 0 disables (default 25000)' },
  { key: 'transports', flag: 'transports', kind: 'list', help: 'connection types offered (default websocket,long-polling,cross-origin-long-polling)' },
  { key: 'allowedOrigins', flag: 'allowed-origins', kind: 'list', help: 'origins allowed cross-origin, comma-separated, or * (default: same origin only)' },
  { key: 'jsonp', flag: 'jsonp', kind: 'boolean', help: 'serve callback-polling (JSONP); it bypasses the same-origin policy (default false)' },
  { key: 'heartbeat', flag: 'heartbeat', kind: 'integer', help: 'idle time before an SSE or HTTP stream gets a no-op, ms (default 15000)' },
  { key: 'streamPadding', flag: 'stream-padding', kind: 'integer', help: 'bytes of padding at the start of a stream, for buffering proxies (default 0)' },
  { key: 'maxBufferedBytes', flag: 'max-buffered-bytes', kind: 'integer', help: 'unsent bytes after which a push line counts as congested (default 1048576)' },
  { key: 'open', flag: 'open', kind: 'boolean', help: 'OPEN MODE, for development only: any client may publish and subscribe anywhere (default false)' },
  { key: 'anonymous', flag: 'anonymous', kind: 'boolean', help: 'give sessions to handshakes without credentials (default true)' },
  { key: 'rules', flag: 'rules', kind: 'file', help: 'JSON file with the channel authorization rules, e.g. [{"channel":"/chat/**","publish":"authenticated"}]' },
  { key: 'jwtPublicKey', flag: 'jwt-public-key', kind: 'file', help: 'PEM file of the public key that signs tokens (the HMAC secret comes from PERIHELION_JWT_SECRET)' },
  { key: 'jwtAlgorithm', flag: 'jwt-algorithm', kind: 'string', help: 'algorithm of --jwt-public-key (default RS256)' },
  { key: 'jwks', flag: 'jwks', kind: 'file', help: 'JSON Web Key Set file of the keys that sign tokens' },
  { key: 'sessionBinding', flag: 'session-binding', kind: 'string', help: 'cookie: sessions only accept their own browser or line; none: the clientId suffices (default cookie)' },
  { key: 'maxMessageBytes', flag: 'max-message-bytes', kind: 'integer', help: 'largest published message (default 524288)' },
  { key: 'maxSessionsPerIp', flag: 'max-sessions-per-ip', kind: 'integer', help: 'live sessions per remote address; 0 = no limit (default 1000)' },
  { key: 'publishRate', flag: 'publish-rate', kind: 'integer', help: 'publishes per second per session; 0 = no limit (default 500)' },
  { key: 'publishBurst', flag: 'publish-burst', kind: 'integer', help: 'publish burst per session (default 1000)' },
  { key: 'handshakeRate', flag: 'handshake-rate', kind: 'integer', help: 'handshakes per second per remote address; 0 = no limit (default 50)' },
  { key: 'handshakeBurst', flag: 'handshake-burst', kind: 'integer', help: 'handshake burst per remote address (default 200)' },
  { key: 'bodyTimeout', flag: 'body-timeout', kind: 'integer', help: 'longest pause in a request body before it is refused, ms (default 10000)' },
  { key: 'demo', flag: 'demo', kind: 'boolean', help: 'serve the demo landing page at / (default true)' },
];

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
}

/** Merges flags (already parsed as strings or booleans) over the environment over defaults. */
export function resolveSettings(flags: Record<string, unknown>, env: NodeJS.ProcessEnv): Settings {
  const values: Record<string, unknown> = {};
  if (env.PORT !== undefined && env.PORT !== '') values.port = convert(SETTINGS[0]!, env.PORT, 'PORT');
  if (env.HOST !== undefined && env.HOST !== '') values.host = env.HOST;
  for (const setting of SETTINGS) {
    const name = envName(setting);
    const fromEnv = env[name];
    if (fromEnv !== undefined && fromEnv !== '') values[setting.key] = convert(setting, fromEnv, name);
    const fromFlag = flags[camel(setting.flag)];
    if (typeof fromFlag === 'string') values[setting.key] = convert(setting, fromFlag, `--${setting.flag}`);
    else if (typeof fromFlag === 'boolean' && setting.kind === 'boolean') values[setting.key] = fromFlag;
  }
  const { port = 8080, host, demo = true, jwtPublicKey, jwtAlgorithm, jwks, rules, ...server } = values;
  if (typeof port !== 'number' || port > 65535) throw new SettingsError(`port must be from 0 to 65535, got ${String(port)}`);
  const options = server as ServerOptions;
  // Signed-token keys: the HMAC secret only from the environment, so it never shows in `ps`.
  const secret = env.PERIHELION_JWT_SECRET;
  const keys = [secret, jwtPublicKey, jwks].filter((k) => k !== undefined && k !== '');
  if (keys.length > 1) throw new SettingsError('give one token key: PERIHELION_JWT_SECRET, --jwt-public-key or --jwks');
  if (secret !== undefined && secret !== '') options.jwt = { secret };
  else if (typeof jwtPublicKey === 'string') options.jwt = { publicKey: jwtPublicKey, ...(typeof jwtAlgorithm === 'string' ? { algorithm: jwtAlgorithm } : {}) };
  else if (typeof jwks === 'string') options.jwt = { jwks: parseJson(jwks, '--jwks') as never };
  if (typeof rules === 'string') options.channels = parseJson(rules, '--rules') as never;
  return { server: options, port, host: host as string | undefined, demo: demo as boolean };
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
