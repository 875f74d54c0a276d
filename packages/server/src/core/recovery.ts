/**
 * Reading a subscribe's recovery request (Perihelion's extension to Bayeux, docs/protocol.md):
 *
 *   {channel: "/meta/subscribe", subscription: "/chat/a",
 *    ext: {recover: {"/chat/a": {epoch: "k3x9", offset: 41}}}}
 *
 * Each entry names an exact channel and the last position the client saw on it. An entry counts
 * for the first pattern of this subscribe that matches its channel; entries no pattern matches
 * are ignored (they belong to a subscription made earlier, whose messages kept flowing).
 */
import { asPosition, bayeuxError, channelProblem, isWildcard, matchingPatterns } from '@perihelion/protocol';
import type { RecoverRequest } from '../engine/engine.js';

export type RecoverRequests = { ok: true; byPattern: ReadonlyMap<string, RecoverRequest[]> } | { ok: false; error: string };

/** What a subscribe that asks for no recovery reads (most do): one answer shared by all. */
const NONE: RecoverRequests = { ok: true, byPattern: new Map() };

export function readRecoverRequests(recover: unknown, patterns: readonly string[], limits: { maxEntries: number; maxChannelLength: number }): RecoverRequests {
  if (recover === undefined) return NONE;
  const byPattern = new Map<string, RecoverRequest[]>();
  const refuse = (detail: string): RecoverRequests => ({ ok: false, error: bayeuxError('badRequest', ['ext.recover'], detail) });
  if (typeof recover !== 'object' || recover === null || Array.isArray(recover)) {
    return refuse('must map channels to positions, like {"/chat/a": {"epoch": "k3x9", "offset": 41}}');
  }
  const entries = Object.entries(recover as Record<string, unknown>);
  if (entries.length > limits.maxEntries) return refuse(`at most ${limits.maxEntries} channels`);
  // Each entry looks up the depth+1 patterns that could match its channel, instead of trying
  // every pattern of the subscribe: a thousand entries against a thousand patterns stays cheap.
  const order = new Map(patterns.map((pattern, i) => [pattern, i]));
  for (const [channel, value] of entries) {
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: limits.maxChannelLength });
    if (problem) return refuse(`${JSON.stringify(channel.slice(0, 100))}: ${isWildcard(channel) ? 'positions belong to channels, not patterns' : problem}`);
    const since = asPosition(value);
    if (!since) return refuse(`${channel}: a position is {"epoch": string, "offset": integer >= 0}`);
    let pattern: string | undefined;
    for (const candidate of matchingPatterns(channel)) {
      const at = order.get(candidate);
      if (at !== undefined && (pattern === undefined || at < order.get(pattern)!)) pattern = candidate;
    }
    if (pattern === undefined) continue;
    let list = byPattern.get(pattern);
    if (!list) byPattern.set(pattern, (list = []));
    list.push({ channel, since });
  }
  return { ok: true, byPattern };
}
