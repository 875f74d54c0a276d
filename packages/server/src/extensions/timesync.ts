/**
 * The CometD `timesync` extension, server side: lets a client that registers CometD's
 * TimeSyncExtension estimate its clock's offset from the server's and the network's lag, so that
 * `cometd.getServerTime()` means the server's time (CometD docs "extensions_timesync"; the CometD
 * server's TimesyncExtension answers the same way).
 *
 * The wire contract: each /meta message of such a client carries `ext.timesync: {tc, l, o}` (its
 * clock when sending, and its current lag and offset estimates). The reply carries
 * `ext.timesync: {tc, ts, p, a}`: `tc` echoed, `ts` the server's clock when the message arrived,
 * `p` how long the server kept it (a held /meta/connect: the hold) and `a` the accuracy of the
 * client's estimates (`tc + o + l - ts`). The client takes `lag = (now - tc - p) / 2` and
 * `offset = ts - tc - lag`, averaging its last samples.
 *
 * A built-in rather than a pipeline hook: the reply needs the request's arrival time, and a hook
 * would make every message of every client pass a promise. Only messages that carry
 * `ext.timesync` pay anything; every such request is answered (CometD's server skips the answer
 * when the client's estimate is already within 25 ms; answering always gives the client more
 * samples for a few dozen bytes).
 */
import type { Message } from '@perihelion/protocol';

/** The part of a request's `ext.timesync` the server reads, with the arrival time it stamps. */
interface TimesyncRequest {
  tc: number;
  ts: number;
  l?: unknown;
  o?: unknown;
}

export interface TimesyncReply {
  tc: number;
  ts: number;
  p: number;
  a?: number;
}

/**
 * Stamps a /meta message's `ext.timesync` with the time it arrived (`ts`, overwriting whatever the
 * client put there), when it carries one with a numeric `tc`. Called before anything else sees
 * the message, so that the server's time is the one measured.
 */
export function stampTimesync(message: Message, now: number): void {
  const sync = timesyncOf(message);
  if (sync !== undefined && Number.isFinite(sync.tc)) sync.ts = now;
}

/** The reply's `ext.timesync` for a request stamped by stampTimesync, or undefined. */
export function answerTimesync(request: Message, now: number): TimesyncReply | undefined {
  const sync = timesyncOf(request);
  if (sync === undefined || !Number.isFinite(sync.tc) || !Number.isFinite(sync.ts)) return undefined;
  const answer: TimesyncReply = { tc: sync.tc, ts: sync.ts, p: Math.max(0, now - sync.ts) };
  // The accuracy of the client's own estimates, when it sent them (it sends 0 and 0 at first).
  if (Number.isFinite(sync.l) && Number.isFinite(sync.o)) answer.a = Math.round(sync.tc + (sync.o as number) + (sync.l as number) - sync.ts);
  return answer;
}

/** A /meta message's `ext.timesync`, if it is an object (`ext` itself is checked to be one). */
function timesyncOf(message: Message): TimesyncRequest | undefined {
  if (!message.channel.startsWith('/meta/')) return undefined;
  const sync = (message.ext as Record<string, unknown> | undefined)?.timesync;
  return typeof sync === 'object' && sync !== null && !Array.isArray(sync) ? (sync as TimesyncRequest) : undefined;
}
