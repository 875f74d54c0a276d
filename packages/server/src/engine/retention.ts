/**
 * History retention by channel pattern: the first rule whose pattern matches a channel decides
 * how many of its messages are kept and for how long; channels no rule matches get the defaults
 * (`historySize`, `historyTtl`). A rule with `size: 0` turns history and positions off.
 */
import { channelProblem, matches } from '@perihelion/protocol';
import { PerihelionError } from '../errors.js';
import type { Retention } from './history.js';

export interface HistoryRule {
  /** A channel or pattern (`/chat/*`, `/stocks/**`). */
  channel: string;
  /** Most messages kept per channel; 0 turns history off. Default: the `historySize` option. */
  size?: number;
  /** Longest a message is kept, in ms. Default: the `historyTtl` option. */
  ttl?: number;
}

const RETENTION_LIMITS = {
  size: [0, 1_000_000],
  ttl: [1000, 30 * 24 * 3600_000],
} as const;

/** `yields`: the channels whose history gives way to the others' (see Retention). */
export function retentionResolver(rules: readonly HistoryRule[], defaults: Retention, yields: (channel: string) => boolean = () => false): (channel: string) => Retention {
  const resolved = rules.map((rule) => ({ pattern: rule.channel, retention: { size: rule.size ?? defaults.size, ttl: rule.ttl ?? defaults.ttl } }));
  return (channel) => {
    const retention = resolved.find((rule) => matches(rule.pattern, channel))?.retention ?? defaults;
    return yields(channel) ? { ...retention, yields: true } : retention;
  };
}

/** Checks the `history` option, naming the rule and field at fault. */
export function validateHistoryRules(rules: unknown): asserts rules is HistoryRule[] | undefined {
  if (rules === undefined) return;
  const fail = (message: string): never => {
    throw new PerihelionError('ERR_INVALID_OPTION', message);
  };
  if (!Array.isArray(rules)) fail('option "history" must be a list of rules like { channel: "/chat/*", size: 500, ttl: 600000 }');
  (rules as unknown[]).forEach((rule, i) => {
    const where = `option "history"[${i}]`;
    if (typeof rule !== 'object' || rule === null || Array.isArray(rule)) fail(`${where} must be an object like { channel: "/chat/*", size: 500 }`);
    const { channel, ...rest } = rule as Record<string, unknown>;
    const problem = channelProblem(channel);
    if (problem) fail(`${where}.channel: ${problem}`);
    for (const [key, value] of Object.entries(rest)) {
      if (!(key in RETENTION_LIMITS)) fail(`${where} has unknown field "${key}"; allowed: channel, size, ttl`);
      const [min, max] = RETENTION_LIMITS[key as keyof typeof RETENTION_LIMITS];
      if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
        fail(`${where}.${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
      }
    }
  });
}
