/**
 * Channel names and patterns (Bayeux §Channels, §Channel Globbing).
 *
 * Grammar. The spec's segment is `(alphanum | mark)+` with `mark = - _ ! ~ ( ) $ @`; the CometD
 * server and client accept a wider set (API Bayeux.Validator): letters, digits and
 * ` !#$()+-.@_{}~`. We accept CometD's superset on input so that CometD applications keep
 * working, except that `*` may only form a whole last segment (`*` or `**`): a name holding
 * `*` anywhere else would be ambiguous with a pattern.
 */

const SEGMENT = /^[A-Za-z0-9 !#$()+\-.@_{}~]+$/;
/** A name made of such segments only, no wildcard: the usual case, told by one test. */
const PLAIN_CHANNEL = /^(?:\/[A-Za-z0-9 !#$()+\-.@_{}~]+)+$/;

export type ChannelKind = 'meta' | 'service' | 'broadcast';

/** Why a string is not a channel name, in words a user can act on; null when it is one. */
export function channelProblem(name: unknown, { allowWildcard = true, maxLength = 1024 } = {}): string | null {
  if (typeof name !== 'string') return 'channel must be a string';
  if (name.length === 0) return 'channel must not be empty';
  if (name.length > maxLength) return `channel is longer than ${maxLength} characters`;
  if (PLAIN_CHANNEL.test(name)) return null;
  if (name[0] !== '/') return 'channel must start with "/"';
  const segments = name.slice(1).split('/');
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    if (segment === '') return 'channel has an empty segment ("//" or a trailing "/")';
    if (segment === '*' || segment === '**') {
      if (i !== segments.length - 1) return 'a wildcard (* or **) may only be the last segment';
      if (!allowWildcard) return 'wildcards (* or **) are not allowed here';
      continue;
    }
    if (!SEGMENT.test(segment)) {
      return `segment "${segment}" may only hold letters, digits and the marks ! # $ ( ) + - . @ _ { } ~ or a space`;
    }
  }
  return null;
}

export function isValidChannel(name: unknown): name is string {
  return channelProblem(name, { allowWildcard: false }) === null;
}

export function isValidPattern(name: unknown): name is string {
  return channelProblem(name) === null;
}

export function isWildcard(name: string): boolean {
  return name.endsWith('/*') || name.endsWith('/**');
}

export function isMeta(name: string): boolean {
  return name === '/meta' || name.startsWith('/meta/');
}

export function isService(name: string): boolean {
  return name === '/service' || name.startsWith('/service/');
}

export function channelKind(name: string): ChannelKind {
  if (isMeta(name)) return 'meta';
  if (isService(name)) return 'service';
  return 'broadcast';
}

/**
 * The subscription keys that match a published channel: the channel itself, `<parent>/*`,
 * and `<ancestor>/**` for every ancestor including the root. Matching a publish therefore costs
 * depth+1 map look-ups, whatever the number of subscriptions (the same idea as Faye's
 * Channel.expand). `/a/b` → `/a/b`, `/a/*`, `/a/**`, `/**`.
 */
export function matchingPatterns(channel: string): string[] {
  const segments = channel.slice(1).split('/');
  const keys = [channel];
  let prefix = '';
  for (let i = 0; i < segments.length; i++) {
    if (i === segments.length - 1) keys.push(`${prefix}/*`);
    keys.push(`${prefix}/**`);
    prefix += `/${segments[i]}`;
  }
  return keys;
}

/** Whether `pattern` (a channel or a `*`/`**` pattern) matches the concrete `channel`. */
export function matches(pattern: string, channel: string): boolean {
  if (pattern === channel) return true;
  if (pattern.endsWith('/**')) {
    const base = pattern.slice(0, -2); // keeps the trailing "/"
    return channel.startsWith(base) && channel.length > base.length;
  }
  if (pattern.endsWith('/*')) {
    const base = pattern.slice(0, -1);
    return channel.startsWith(base) && channel.length > base.length && channel.indexOf('/', base.length) === -1;
  }
  return false;
}
