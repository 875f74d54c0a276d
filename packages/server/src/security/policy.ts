/**
 * The security policy: who may create, subscribe to and publish on which channel. Asked by the
 * server core before it acts on a client's subscribe or publish, in this order:
 *
 * 0. presence (when the `presence` option is on): a channel or pattern under /presence/ may be
 *    subscribed to exactly when the channel or pattern it watches may (the whole check below,
 *    asked of that one), and never published to by a client, not even in open mode: presence
 *    events are the server's;
 * 1. open mode (development and compatibility testing): everything is allowed;
 * 2. the application's `authorize` hook, when it returns true or false;
 * 3. a subscription token in the subscribe's `ext.token` naming the channel (private channels);
 * 4. the configured channel rules (channel-rules.ts);
 * 5. the defaults: anyone may subscribe to broadcast channels and create them; publishing from
 *    clients is denied, so only the server publishes where no rule says otherwise, but for the
 *    server's own services (`openServices`: /service/presence, /service/state), which answer only
 *    about channels the asker may subscribe to.
 */
import { isMeta, isService, type Message } from '@perihelion/protocol';
import { watchedChannel } from '../core/presence.js';
import type { Session } from '../core/session.js';
import { andThen, type MaybePromise } from '../maybe-promise.js';
import { AuthenticationError } from './authenticate.js';
import { ChannelRules, type ChannelRule, type Operation } from './channel-rules.js';
import type { Identity } from './identity.js';
import type { JwtVerifier } from './jwt.js';

export interface AuthorizeRequest {
  operation: Operation;
  /** The channel, or the pattern of a subscription. */
  channel: string;
  session: Session;
  identity: Identity | null;
  message: Message;
}

/** Return true to allow, false to refuse, undefined to let the rules decide. */
export type AuthorizeHook = (request: AuthorizeRequest) => boolean | undefined | Promise<boolean | undefined>;

const DEFAULTS: Record<Operation, boolean> = { create: true, subscribe: true, publish: false };

export interface PolicyOptions {
  open: boolean;
  rules: ChannelRule[];
  authorize?: AuthorizeHook | undefined;
  subscriptionTokens?: JwtVerifier | null;
  /** Presence is on: /presence/** is the server's (see step 0). */
  presence?: boolean;
  /**
   * The server's own services that anyone may ask by default (each answers only about channels
   * the asker may subscribe to): /service/presence, /service/state.
   */
  openServices?: readonly string[];
}

export class SecurityPolicy {
  private readonly rules: ChannelRules;

  constructor(private readonly options: PolicyOptions) {
    this.rules = new ChannelRules(options.rules);
  }

  get ruleCount(): number {
    return this.options.rules.length;
  }

  get open(): boolean {
    return this.options.open;
  }

  /**
   * Null when allowed; otherwise the reason, for the client's error message. Answers at once
   * unless the `authorize` hook answers with a promise or a subscription token is to be verified.
   */
  check(operation: Operation, channel: string, session: Session, message: Message): MaybePromise<string | null> {
    const watched = this.options.presence ? watchedChannel(channel) : null;
    if (watched !== null) return this.checkPresence(operation, watched, session, message);
    if (this.options.open) return null;
    if (!this.options.authorize) return this.afterHook(undefined, operation, channel, session.identity, message);
    const verdict = this.options.authorize({ operation, channel, session, identity: session.identity, message });
    // Any thenable the hook answers with is waited for, as an `await` would.
    if (verdict !== true && verdict !== false && verdict !== undefined) {
      return Promise.resolve(verdict).then((settled) => this.afterHook(settled, operation, channel, session.identity, message));
    }
    return this.afterHook(verdict, operation, channel, session.identity, message);
  }

  /** Steps 2 (the hook's verdict), 3, 4 and 5. */
  private afterHook(verdict: boolean | undefined, operation: Operation, channel: string, identity: Identity | null, message: Message): MaybePromise<string | null> {
    if (verdict === true) return null;
    if (verdict === false) return `${operation} denied by the application`;
    if (operation === 'subscribe' && this.options.subscriptionTokens && typeof message.ext?.token === 'string') {
      return this.tokenGrants(channel, identity, message).then((granted) => (granted ? null : this.byRules(operation, channel, identity)));
    }
    return this.byRules(operation, channel, identity);
  }

  /** Steps 4 and 5: the channel rules, then the defaults. */
  private byRules(operation: Operation, channel: string, identity: Identity | null): string | null {
    const decision = this.rules.decide(operation, channel, identity);
    if (decision) return decision.allowed ? null : `${operation} denied by rule ${decision.rule}`;
    if (DEFAULTS[operation]) return null;
    if (operation === 'publish' && this.options.openServices?.includes(channel)) return null;
    return `${operation} is denied unless a rule allows it`;
  }

  /**
   * Whether `create` needs no look at the channel: the policy allows it whatever the channel
   * holds, decided without the application's hook (which is asked only about channels nobody
   * subscribes to yet, see checkCreate in core/publish.ts).
   */
  createsFreely(channel: string, session: Session): boolean {
    // Open, or a presence channel (watching creates nothing): allowed, as `check` says.
    if (this.options.open || (this.options.presence && watchedChannel(channel) !== null)) return true;
    return !this.options.authorize && this.byRules('create', channel, session.identity) === null;
  }

  /** A presence channel (or pattern) that watches `watched`. */
  private checkPresence(operation: Operation, watched: string, session: Session, message: Message): MaybePromise<string | null> {
    if (operation === 'publish') return 'presence events are published by the server only';
    if (isMeta(watched) || isService(watched)) return `${watched} has no presence (meta and service channels have no members)`;
    // Watching a channel's presence creates nothing: the server publishes there.
    if (operation === 'create') return null;
    return andThen(this.check('subscribe', watched, session, message), (refused) => (refused === null ? null : `the presence of ${watched} is open to those who may subscribe to it: ${refused}`));
  }

  /** A subscription token (a JWT whose `channel`/`channels` claim names this channel) opens it. */
  private async tokenGrants(channel: string, identity: Identity | null, message: Message): Promise<boolean> {
    const token = message.ext?.token;
    if (!this.options.subscriptionTokens || typeof token !== 'string') return false;
    try {
      const claims = await this.options.subscriptionTokens.verify(token);
      const channels = Array.isArray(claims.channels) ? claims.channels : [claims.channel];
      if (!channels.includes(channel)) return false;
      // A token issued to one user does not open the channel for another.
      return claims.sub === undefined || claims.sub === identity?.id;
    } catch (error) {
      if (error instanceof AuthenticationError) return false;
      throw error;
    }
  }
}
