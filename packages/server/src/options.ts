/**
 * Server options: every limit has a default and a knob (option-table.ts). `resolveOptions`
 * rejects unknown names and wrong types with a message naming the option and what it accepts.
 */
import type { Engine } from './engine/engine.js';
import type { Extension } from './extensions/pipeline.js';
import { PerihelionError } from './errors.js';
import type { Authenticator } from './security/authenticate.js';
import type { ChannelRule } from './security/channel-rules.js';
import { checkJwtOptions, type JwtOptions } from './security/jwt.js';
import type { AuthorizeHook } from './security/policy.js';
import { validateCallouts, type CalloutRule } from './callouts/allow.js';
import { validateWebhooks, type Webhook } from './callouts/webhooks.js';
import { validateHistoryRules, type HistoryRule } from './engine/retention.js';
import { OPTION_TABLE, checkOption, tableDefaults, type OptionSpec, type ScalarOptions } from './option-table.js';

/** What happens to a slow consumer's full queue (see `queueOverflow` in option-table.ts). */
export type QueueOverflow = ScalarOptions['queueOverflow'];

/**
 * The options of `createServer`. Each one's kind, default, range and meaning are in
 * `OPTION_TABLE` (option-table.ts), which the README's table of options follows; the options with
 * a shape of their own are typed here.
 */
export type ServerOptions = Partial<ScalarOptions> & {
  /** Retention per channel pattern, first match wins, e.g. [{ channel: "/chat/**", size: 5000 }]. Default: []. */
  history?: HistoryRule[];
  /** Authenticates handshakes (see security/authenticate.ts). Default: the JWT authenticator when `jwt` is set, else none. */
  authenticate?: Authenticator;
  /** Keys for signed tokens: handshake tokens (`ext.token`) and subscription tokens. */
  jwt?: JwtOptions;
  /** Authorization rules by channel pattern (see security/channel-rules.ts). Default: []. */
  channels?: ChannelRule[];
  /** Programmatic authorization, asked before the rules. */
  authorize?: AuthorizeHook;
  /** Where subscriptions live and how publishes fan out. Default: a new MemoryEngine. */
  engine?: Engine;
  /** Extensions added at start, in order. */
  extensions?: Extension[];
  /** Ask the application over HTTP before a handshake, subscribe or publish (see callouts/allow.ts). */
  callouts?: CalloutRule[];
  /** Tell the application over HTTP about handshakes, subscribes, unsubscribes and disconnects (see callouts/webhooks.ts). */
  webhooks?: Webhook[];
};

export type ResolvedOptions = ScalarOptions & { history: HistoryRule[] };

export const DEFAULTS: ResolvedOptions = { ...tableDefaults(), history: [] };

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

export function resolveOptions(options: ServerOptions = {}): ResolvedOptions {
  if (typeof options !== 'object' || options === null) invalid('options must be an object');
  const table = OPTION_TABLE as Record<string, OptionSpec>;
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(table, key)) invalid(`unknown option "${key}"; known options are: ${Object.keys(table).join(', ')}`);
  }
  const resolved: ResolvedOptions = { ...tableDefaults(), history: [] };
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue;
    const checked = checkOption(key, table[key]!, value);
    if ('error' in checked) invalid(checked.error);
    if (table[key]!.kind !== 'structured') (resolved as unknown as Record<string, unknown>)[key] = checked.value;
  }
  for (const key of ['authenticate', 'authorize'] as const) {
    if (options[key] !== undefined && typeof options[key] !== 'function') invalid(`option "${key}" must be a function`);
  }
  if (options.engine !== undefined && (typeof options.engine !== 'object' || options.engine === null || typeof (options.engine as Partial<Engine>).start !== 'function')) {
    invalid('option "engine" must be an engine object, such as a MemoryEngine or a RedisEngine');
  }
  if (options.jwt !== undefined && (typeof options.jwt !== 'object' || options.jwt === null)) {
    invalid('option "jwt" must be an object like { secret } or { publicKey, algorithm } or { jwks }');
  }
  if (options.jwt !== undefined) checkJwtOptions(options.jwt);
  if (resolved.jsonp && !resolved.transports.includes('callback-polling')) {
    resolved.transports = [...resolved.transports, 'callback-polling'];
  } else if (!resolved.jsonp && resolved.transports.includes('callback-polling')) {
    invalid('option "transports" lists callback-polling, which needs "jsonp: true" (--jsonp): JSONP bypasses the same-origin policy, so it is off unless enabled');
  }
  validateHistoryRules(options.history);
  if (options.history) resolved.history = options.history.map((rule) => ({ ...rule }));
  validateCallouts(options.callouts);
  validateWebhooks(options.webhooks);
  return resolved;
}
