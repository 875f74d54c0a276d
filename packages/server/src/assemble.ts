/**
 * Where the server core is assembled from the options: the engine (a MemoryEngine unless one is
 * given), history retention, the security parts (authenticator, JWT keys, channel rules and the
 * `authorize` hook, the handshake and publish rate limits) and the extensions, the application's
 * first and the HTTP call-outs after them. The core builds none of these itself.
 */
import { calloutExtension } from './callouts/allow.js';
import { PRESENCE_SERVICE, watchedChannel } from './core/presence.js';
import { ServerCore, type Security } from './core/server.js';
import type { HistorySettings } from './engine/history.js';
import { MemoryEngine } from './engine/memory.js';
import { retentionResolver } from './engine/retention.js';
import { ExtensionPipeline } from './extensions/pipeline.js';
import { resolveOptions, type ResolvedOptions, type ServerOptions } from './options.js';
import { JwtVerifier, jwtAuthenticator } from './security/jwt.js';
import { SecurityPolicy } from './security/policy.js';
import { KeyedLimiter, TokenBucket } from './security/rate-limit.js';
import { STATE_SERVICE } from './state/state-service.js';

export interface Observers {
  /** Told how long the oldest of the messages just written to a session waited, in ms. */
  observeDelivery: (waitedMs: number, writes?: number) => void;
}

/** Checks the options (throwing ERR_INVALID_OPTION) and builds the core they describe. */
export function assembleCore(options: ServerOptions, observers: Observers): ServerCore {
  const resolved = resolveOptions(options);
  const engine = options.engine ?? new MemoryEngine();
  const history = historySettings(resolved);
  const checks = security(options, resolved);
  const extensions = new ExtensionPipeline();
  for (const extension of options.extensions ?? []) extensions.add(extension);
  const core = new ServerCore({ options: resolved, engine, extensions, security: checks, historySettings: history, observeDelivery: observers.observeDelivery });
  if (options.callouts && options.callouts.length > 0) extensions.add(calloutExtension(options.callouts, (error) => core.reportError(error)));
  return core;
}

function security(options: ServerOptions, resolved: ResolvedOptions): Security {
  const verifier = options.jwt ? new JwtVerifier(options.jwt) : null;
  const { publishRate, publishBurst, subscribeRate, subscribeBurst } = resolved;
  return {
    authenticator: options.authenticate ?? (verifier ? jwtAuthenticator(verifier) : null),
    policy: new SecurityPolicy({ open: resolved.open, rules: options.channels ?? [], authorize: options.authorize, subscriptionTokens: verifier, presence: resolved.presence, openServices: [...(resolved.presence ? [PRESENCE_SERVICE] : []), STATE_SERVICE] }),
    handshakeLimiter: new KeyedLimiter(resolved.handshakeRate, resolved.handshakeBurst),
    publishLimit: () => (publishRate > 0 ? new TokenBucket(publishRate, publishBurst) : null),
    subscribeLimit: () => (subscribeRate > 0 ? new TokenBucket(subscribeRate, subscribeBurst) : null),
  };
}

function historySettings(resolved: ResolvedOptions): HistorySettings {
  return {
    retentionFor: retentionResolver(resolved.history, { size: resolved.historySize, ttl: resolved.historyTtl }, (channel) => watchedChannel(channel) !== null),
    maxChannels: resolved.maxHistoryChannels,
    maxChars: resolved.maxHistoryBytes,
  };
}
