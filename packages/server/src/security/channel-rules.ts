/**
 * Authorization rules by channel pattern, written in configuration:
 *
 *   { channel: '/chat/**',      subscribe: 'authenticated', publish: 'role:writer' }
 *   { channel: '/user/{id}/**', subscribe: 'user:{id}',     publish: 'user:{id}' }
 *
 * A pattern is a channel whose segments may be `{name}` (any one segment, captured), and whose
 * last segment may be `*` (one) or `**` (one or more). An access is one term or a list (any may
 * grant): `anyone`, `authenticated`, `nobody`, `role:<name>`, `user:{name}` (the session's user
 * id equals the captured segment).
 *
 * For a concrete channel the first rule that matches and names the operation decides. A
 * subscription to a wildcard pattern could reach channels decided by several rules, so it is
 * allowed only when every rule it overlaps allows it; a `{name}` the pattern does not spell out
 * is unknown, so `user:{name}` refuses it (nobody subscribes to `/user/**` and reads everyone's).
 */
import { PerihelionError } from '../errors.js';
import type { Identity } from './identity.js';

export type Operation = 'create' | 'subscribe' | 'publish';
export const OPERATIONS: readonly Operation[] = ['create', 'subscribe', 'publish'];

export type Access = string | string[];

export interface ChannelRule {
  channel: string;
  create?: Access;
  subscribe?: Access;
  publish?: Access;
}

type Term =
  | { kind: 'anyone' | 'authenticated' | 'nobody' }
  | { kind: 'role'; role: string }
  | { kind: 'user'; variable: string };

type Segment = { literal: string } | { variable: string } | { wildcard: '*' | '**' };

interface CompiledRule {
  source: string;
  segments: Segment[];
  access: Partial<Record<Operation, Term[]>>;
}

const LITERAL = /^[A-Za-z0-9 !#$()+\-.@_~]+$/;

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', `option "channels": ${message}`);
}

function compileSegments(pattern: unknown): Segment[] {
  if (typeof pattern !== 'string' || !pattern.startsWith('/') || pattern.length < 2) {
    invalid(`a rule's "channel" must be a pattern like "/chat/**" or "/user/{id}/**", got ${JSON.stringify(pattern)}`);
  }
  const parts = pattern.slice(1).split('/');
  return parts.map((part, i): Segment => {
    if (part === '*' || part === '**') {
      if (i !== parts.length - 1) invalid(`in ${pattern}: a wildcard may only be the last segment`);
      return { wildcard: part };
    }
    const variable = /^\{(\w+)\}$/.exec(part);
    if (variable) return { variable: variable[1]! };
    if (!LITERAL.test(part)) invalid(`in ${pattern}: segment "${part}" is neither a name, a {variable} nor a wildcard`);
    return { literal: part };
  });
}

function compileAccess(access: unknown, segments: Segment[], where: string): Term[] {
  const terms = Array.isArray(access) ? access : [access];
  if (terms.length === 0) invalid(`${where}: an empty list grants nothing; write "nobody"`);
  return terms.map((term): Term => {
    if (term === 'anyone' || term === 'authenticated' || term === 'nobody') return { kind: term };
    if (typeof term === 'string' && /^role:[\w.\-]+$/.test(term)) return { kind: 'role', role: term.slice(5) };
    const user = typeof term === 'string' ? /^user:\{(\w+)\}$/.exec(term) : null;
    if (user) {
      if (!segments.some((s) => 'variable' in s && s.variable === user[1])) invalid(`${where}: "${term}" names {${user[1]}}, which the channel does not capture`);
      return { kind: 'user', variable: user[1]! };
    }
    return invalid(`${where}: unknown access ${JSON.stringify(term)}; write anyone, authenticated, nobody, role:<name> or user:{variable}`);
  });
}

/**
 * Checks a list of rules as the `channels` option is checked (throwing ERR_INVALID_OPTION naming
 * the rule by its index in `rules`), for a program that adds rules of its own to a user's list
 * and would have the user's errors counted in the user's list.
 */
export function checkChannelRules(rules: unknown): void {
  compileRules(rules);
}

export function compileRules(rules: unknown): CompiledRule[] {
  if (!Array.isArray(rules)) invalid('must be a list of rules like { "channel": "/chat/**", "publish": "authenticated" }');
  return rules.map((rule, index) => {
    if (typeof rule !== 'object' || rule === null) invalid(`rule ${index} must be an object`);
    for (const key of Object.keys(rule)) {
      if (key !== 'channel' && !(OPERATIONS as readonly string[]).includes(key)) {
        invalid(`rule ${index} has unknown key "${key}"; allowed: channel, ${OPERATIONS.join(', ')}`);
      }
    }
    const { channel } = rule as ChannelRule;
    const segments = compileSegments(channel);
    const access: Partial<Record<Operation, Term[]>> = {};
    for (const operation of OPERATIONS) {
      const value = (rule as ChannelRule)[operation];
      if (value !== undefined) access[operation] = compileAccess(value, segments, `rule ${index} (${channel}) ${operation}`);
    }
    return { source: channel, segments, access };
  });
}

/**
 * Binds the rule's variables if it can match something `target` matches; null when the two
 * cannot share a channel. `target` is a channel or a subscription pattern (wildcard last).
 */
function overlap(rule: Segment[], target: string[]): Map<string, string> | null {
  const bound = new Map<string, string>();
  for (let i = 0; ; i++) {
    const r = rule[i];
    const t = target[i];
    if (r === undefined && t === undefined) return bound;
    if (r !== undefined && 'wildcard' in r && r.wildcard === '**') return t !== undefined ? bound : null;
    if (t === '**') return r !== undefined ? bound : null;
    if (r === undefined || t === undefined) return null;
    if ('literal' in r) {
      if (t !== '*' && t !== r.literal) return null;
    } else if ('variable' in r) {
      if (t !== '*') bound.set(r.variable, t);
    }
  }
}

function grants(terms: Term[], identity: Identity | null, bound: Map<string, string>): boolean {
  return terms.some((term) => {
    switch (term.kind) {
      case 'anyone':
        return true;
      case 'nobody':
        return false;
      case 'authenticated':
        return identity !== null;
      case 'role':
        return identity?.roles.includes(term.role) ?? false;
      case 'user': {
        const value = bound.get(term.variable);
        return identity !== null && value !== undefined && identity.id === value;
      }
    }
  });
}

export type RuleDecision = { allowed: boolean; rule: string | null };

export class ChannelRules {
  private readonly rules: CompiledRule[];

  constructor(rules: ChannelRule[] = []) {
    this.rules = compileRules(rules);
  }

  /**
   * The decision of the rules for `operation` on `target` (a channel, or a pattern for
   * subscribe), or null when no rule names the operation for it (the policy's default applies).
   */
  decide(operation: Operation, target: string, identity: Identity | null): RuleDecision | null {
    const segments = target.slice(1).split('/');
    const last = segments[segments.length - 1];
    const isPattern = last === '*' || last === '**';
    let decision: RuleDecision | null = null;
    for (const rule of this.rules) {
      const terms = rule.access[operation];
      if (!terms) continue;
      const bound = overlap(rule.segments, segments);
      if (!bound) continue;
      const allowed = grants(terms, identity, bound);
      if (!isPattern) return { allowed, rule: rule.source };
      if (!allowed) return { allowed: false, rule: rule.source };
      decision ??= { allowed: true, rule: rule.source };
    }
    return decision;
  }
}
