/**
 * Allow/deny call-outs: before the server acts on a client's handshake, subscribe or publish, it
 * asks the application over HTTP (the `callouts` option), so an application written in anything
 * (PHP, Django, Rails) can decide with its own sessions and database.
 *
 * The request is a POST of JSON `{operation, channel, clientId, user, data?, ext, remoteAddress}`
 * to the first rule that names the operation and matches the channel; the answer is
 * `{"allow": true}` (with `data` to rewrite a publish, or `ext` to add to a handshake's ext) or
 * `{"allow": false, "reason": "…"}`. No answer in time, a connection error, a status other than
 * 200 or an answer that is not such an object is a failure: the rule's `onFailure` decides, and
 * the failure is reported.
 *
 * It runs as an incoming extension. Messages the server refuses whatever the application says
 * (a malformed handshake, an unknown client, a meta or invalid channel, a publish without data)
 * and subscriptions that grant nothing new (a channel already subscribed, a /service channel) are
 * not called out.
 */
import { META, bayeuxError, channelProblem, isMeta, isService, matches, subscriptionList, type Message } from '@perihelion/protocol';
import { PerihelionError } from '../errors.js';
import type { Extension, ExtensionContext } from '../extensions/pipeline.js';

export type CalloutOperation = 'handshake' | 'subscribe' | 'publish';

export const CALLOUT_OPERATIONS: readonly CalloutOperation[] = ['handshake', 'subscribe', 'publish'];

export interface CalloutRule {
  /** Where the request is POSTed (http:// or https://). */
  url: string;
  /** Operations this rule is asked about. Default: all three. */
  operations?: CalloutOperation[];
  /**
   * Channel patterns (`*` or `**` as the last segment) this rule is asked about; a wildcard
   * subscription is asked about when it overlaps one. Not used for handshakes. Default: every channel.
   */
  channels?: string[];
  /** Longest wait for the answer, in ms (1 to 60000). Default: 2000. */
  timeout?: number;
  /** What a failed call-out (no answer in time, connection error, bad status or answer) decides. Default: "deny". */
  onFailure?: 'deny' | 'allow';
  /** Extra request headers, e.g. a shared secret the application checks. */
  headers?: Record<string, string>;
}

/** The JSON body the application receives. */
export interface CalloutRequest {
  operation: CalloutOperation;
  /** The channel (or subscription pattern); "/meta/handshake" for a handshake. */
  channel: string;
  /** The session's clientId; null for a handshake. */
  clientId: string | null;
  /** The authenticated user's id; null for anonymous sessions and for handshakes (authentication comes after). */
  user: string | null;
  /** The published data (publish only). */
  data?: unknown;
  /** The message's ext without ext.token; {} when it has none. */
  ext: Record<string, unknown>;
  remoteAddress: string | null;
}

/** A call-out that got no usable answer (reported through the server's 'error' event). */
export class CalloutError extends PerihelionError {
  constructor(
    message: string,
    readonly url: string,
    readonly operation: CalloutOperation,
    readonly channel: string,
    options?: { cause?: unknown },
  ) {
    super('ERR_CALLOUT', message, options);
    this.name = 'CalloutError';
  }
}

const DEFAULT_TIMEOUT = 2000;
const MAX_TIMEOUT = 60_000;
const RULE_KEYS = ['url', 'operations', 'channels', 'timeout', 'onFailure', 'headers'];
/** Subscribe channels asked about at the same time, for one message. */
const SUBSCRIBE_CONCURRENCY = 8;
/** The refusal when the application gave no usable answer and the rule says "deny". */
const NO_ANSWER = 'no valid answer from the application';

// ------------------------------------------------------------------------------------ validation

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Checks an http(s) URL; shared with webhooks. */
export function checkUrl(value: unknown, key: string): void {
  let url: URL | null = null;
  if (typeof value === 'string') {
    try {
      url = new URL(value);
    } catch {
      url = null;
    }
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    invalid(`option "${key}" must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  }
}

/** Checks a timeout in ms from 1 to 60000; shared with webhooks. */
export function checkTimeout(value: unknown, key: string): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_TIMEOUT) {
    invalid(`option "${key}" must be an integer from 1 to ${MAX_TIMEOUT} (ms), got ${JSON.stringify(value)}`);
  }
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Checks a header map: token names, string values without CR, LF or NUL; shared with webhooks. */
export function checkHeaders(value: unknown, key: string): void {
  if (value === undefined) return;
  if (!isPlainObject(value)) invalid(`option "${key}" must be an object of header names to string values`);
  for (const [name, header] of Object.entries(value)) {
    if (!HEADER_NAME.test(name)) invalid(`option "${key}": ${JSON.stringify(name)} is not a valid header name`);
    if (typeof header !== 'string' || /[\r\n\0]/.test(header)) {
      invalid(`option "${key}": the value of ${JSON.stringify(name)} must be a string without line breaks`);
    }
  }
}

/** Checks that `value` is an object with only `known` keys; shared with webhooks. */
export function checkKeys(value: unknown, known: readonly string[], key: string): asserts value is Record<string, unknown> {
  if (!isPlainObject(value)) invalid(`option "${key}" must be an object like { url: "https://app.example/…" }`);
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) invalid(`option "${key}": unknown key "${name}"; the keys are: ${known.join(', ')}`);
  }
}

/** Validates the `callouts` option; throws PerihelionError ERR_INVALID_OPTION naming the key. */
export function validateCallouts(value: unknown): void {
  if (value === undefined) return;
  if (!Array.isArray(value)) invalid('option "callouts" must be a list of rules like { url, operations?, channels?, timeout?, onFailure?, headers? }');
  value.forEach((rule: unknown, i) => {
    const key = `callouts[${i}]`;
    checkKeys(rule, RULE_KEYS, key);
    checkUrl(rule.url, `${key}.url`);
    const { operations, channels, onFailure } = rule;
    if (operations !== undefined) {
      if (!Array.isArray(operations) || operations.length === 0) {
        invalid(`option "${key}.operations" must be a non-empty list of: ${CALLOUT_OPERATIONS.join(', ')}`);
      }
      for (const operation of operations) {
        if (!(CALLOUT_OPERATIONS as readonly unknown[]).includes(operation)) {
          invalid(`option "${key}.operations": unknown operation ${JSON.stringify(operation)}; the operations are: ${CALLOUT_OPERATIONS.join(', ')}`);
        }
      }
    }
    if (channels !== undefined) {
      if (!Array.isArray(channels) || channels.length === 0) invalid(`option "${key}.channels" must be a non-empty list of channel patterns`);
      for (const channel of channels) {
        const problem = channelProblem(channel, { maxLength: Number.MAX_SAFE_INTEGER });
        if (problem) invalid(`option "${key}.channels": ${JSON.stringify(channel)} is not a channel pattern: ${problem}`);
      }
    }
    checkTimeout(rule.timeout, `${key}.timeout`);
    if (onFailure !== undefined && onFailure !== 'deny' && onFailure !== 'allow') {
      invalid(`option "${key}.onFailure" must be "deny" or "allow", got ${JSON.stringify(onFailure)}`);
    }
    checkHeaders(rule.headers, `${key}.headers`);
  });
}

// ------------------------------------------------------------------------------------ matching

/** Whether some concrete channel matches both patterns (each a channel or ends in * or **). */
export function overlaps(a: string, b: string): boolean {
  const x = a.slice(1).split('/');
  const y = b.slice(1).split('/');
  for (let i = 0; ; i++) {
    const s = x[i];
    const t = y[i];
    if (s === undefined && t === undefined) return true;
    if (s === '**') return t !== undefined;
    if (t === '**') return s !== undefined;
    if (s === undefined || t === undefined) return false;
    if (s !== '*' && t !== '*' && s !== t) return false;
  }
}

interface CompiledRule {
  url: string;
  operations: ReadonlySet<CalloutOperation>;
  channels: readonly string[] | null;
  timeout: number;
  onFailure: 'deny' | 'allow';
  headers: Record<string, string>;
}

function compile(rule: CalloutRule): CompiledRule {
  return {
    url: rule.url,
    operations: new Set(rule.operations ?? CALLOUT_OPERATIONS),
    channels: rule.channels ? [...rule.channels] : null,
    timeout: rule.timeout ?? DEFAULT_TIMEOUT,
    onFailure: rule.onFailure ?? 'deny',
    headers: { ...rule.headers, 'Content-Type': 'application/json' },
  };
}

function ruleFor(rules: readonly CompiledRule[], operation: CalloutOperation, channel: string): CompiledRule | undefined {
  return rules.find((rule) => {
    if (!rule.operations.has(operation)) return false;
    if (operation === 'handshake' || rule.channels === null) return true;
    // A wildcard subscription reaches every channel it overlaps: "/**" must not slip past a rule for "/private/**".
    const pattern = channel.endsWith('/*') || channel.endsWith('/**');
    return rule.channels.some((filter) => (pattern ? overlaps(filter, channel) : matches(filter, channel)));
  });
}

// ------------------------------------------------------------------------------------ asking

type Verdict =
  | { allow: true; answer: Record<string, unknown> | null }
  | { allow: false; reason: string | undefined; failed: boolean };

async function ask(rule: CompiledRule, request: CalloutRequest, report: (error: unknown) => void): Promise<Verdict> {
  const fail = (message: string, cause?: unknown): Verdict => {
    report(new CalloutError(`call-out to ${rule.url} for ${request.operation} ${request.channel}: ${message}`, rule.url, request.operation, request.channel, cause === undefined ? {} : { cause }));
    return rule.onFailure === 'allow' ? { allow: true, answer: null } : { allow: false, reason: undefined, failed: true };
  };
  let status: number;
  let text: string;
  try {
    const response = await fetch(rule.url, {
      method: 'POST',
      headers: rule.headers,
      body: JSON.stringify(request),
      // A redirect would carry the body and the headers (a secret) elsewhere: it is a failure.
      redirect: 'manual',
      signal: AbortSignal.timeout(rule.timeout),
    });
    status = response.status;
    text = await response.text();
  } catch (error) {
    const timedOut = error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError');
    return fail(timedOut ? `no answer within ${rule.timeout} ms` : `request failed (${describe(error)})`, error);
  }
  if (status !== 200) return fail(`answered HTTP ${status}`);
  let answer: unknown;
  try {
    answer = JSON.parse(text);
  } catch (error) {
    return fail('answered with something that is not JSON', error);
  }
  if (!isPlainObject(answer) || typeof answer.allow !== 'boolean') return fail('answered without a boolean "allow"');
  if (!answer.allow) return { allow: false, reason: typeof answer.reason === 'string' ? answer.reason : undefined, failed: false };
  if (request.operation === 'handshake' && answer.ext !== undefined && !isPlainObject(answer.ext)) return fail('answered with an "ext" that is not an object');
  return { allow: true, answer };
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  // fetch wraps the socket error ("ECONNREFUSED …") in error.cause.
  const cause = (error as { cause?: unknown }).cause;
  return cause instanceof Error ? `${error.message}: ${cause.message}` : error.message;
}

/** The wire error for a refusal: `403:<channel>:Refused by the application[: reason]`. */
function refusal(channel: string | null, verdict: Extract<Verdict, { allow: false }>): string {
  const reason = verdict.failed ? NO_ANSWER : verdict.reason;
  return bayeuxError('refusedByApplication', channel === null ? [] : [channel], reason === '' ? undefined : reason);
}

function withoutToken(ext: unknown): Record<string, unknown> {
  if (!isPlainObject(ext)) return {};
  const { token: _token, ...rest } = ext;
  return rest;
}

// ------------------------------------------------------------------------------------ the extension

/**
 * The incoming extension that calls out, and, when handshakes are called out, an outgoing one
 * that gives a handshake the application refused advice `reconnect: "none"` (the client stops
 * instead of retrying; a failed call-out keeps the clients' own retry).
 */
export function calloutExtension(rules: readonly CalloutRule[], report: (error: unknown) => void): Extension {
  const compiled = rules.map(compile);
  const safeReport = (error: unknown): void => {
    try {
      report(error);
    } catch {
      // Reporting never fails a client's request.
    }
  };

  const base = (operation: CalloutOperation, channel: string, message: Message, context: ExtensionContext): CalloutRequest => ({
    operation,
    channel,
    clientId: context.session?.id ?? null,
    user: context.session?.identity?.id ?? null,
    ext: withoutToken(message.ext),
    remoteAddress: context.transport?.request.remoteAddress ?? context.session?.remoteAddress ?? null,
  });

  async function handshake(message: Message, context: ExtensionContext): Promise<Message> {
    // The server refuses these itself.
    if (typeof message.version !== 'string' || !Array.isArray(message.supportedConnectionTypes)) return message;
    const rule = ruleFor(compiled, 'handshake', META.handshake);
    if (!rule) return message;
    const request = { ...base('handshake', META.handshake, message, context), clientId: null, user: null };
    const verdict = await ask(rule, request, safeReport);
    if (!verdict.allow) return { ...message, error: refusal(null, verdict) };
    const ext = verdict.answer?.ext;
    return isPlainObject(ext) ? { ...message, ext: { ...(isPlainObject(message.ext) ? message.ext : {}), ...ext } } : message;
  }

  async function subscribe(message: Message, context: ExtensionContext): Promise<Message> {
    const session = context.session;
    const channels = subscriptionList(message.subscription);
    if (!session || !channels) return message;
    // Any invalid or meta channel makes the server refuse the whole message.
    if (channels.some((c) => channelProblem(c, { maxLength: Number.MAX_SAFE_INTEGER }) !== null || isMeta(c))) return message;
    const asks: { channel: string; rule: CompiledRule }[] = [];
    for (const channel of new Set(channels)) {
      if (isService(channel) || session.subscriptions.has(channel)) continue;
      const rule = ruleFor(compiled, 'subscribe', channel);
      if (rule) asks.push({ channel, rule });
    }
    const verdicts: (Verdict | undefined)[] = new Array<Verdict | undefined>(asks.length);
    let next = 0;
    let refused = false;
    const worker = async (): Promise<void> => {
      while (next < asks.length && !refused) {
        const i = next++;
        const { channel, rule } = asks[i]!;
        const verdict = await ask(rule, base('subscribe', channel, message, context), safeReport);
        verdicts[i] = verdict;
        if (!verdict.allow) refused = true;
      }
    };
    await Promise.all(Array.from({ length: Math.min(SUBSCRIBE_CONCURRENCY, asks.length) }, worker));
    for (let i = 0; i < asks.length; i++) {
      const verdict = verdicts[i];
      if (verdict && !verdict.allow) return { ...message, error: refusal(asks[i]!.channel, verdict) };
    }
    return message;
  }

  async function publish(message: Message, context: ExtensionContext): Promise<Message> {
    const { channel } = message;
    // The server refuses these itself.
    if (!context.session || message.data === undefined || channelProblem(channel, { allowWildcard: false, maxLength: Number.MAX_SAFE_INTEGER }) !== null) return message;
    const rule = ruleFor(compiled, 'publish', channel);
    if (!rule) return message;
    const verdict = await ask(rule, { ...base('publish', channel, message, context), data: message.data }, safeReport);
    if (!verdict.allow) return { ...message, error: refusal(channel, verdict) };
    const answer = verdict.answer;
    return answer !== null && Object.hasOwn(answer, 'data') ? { ...message, data: answer.data } : message;
  }

  const extension: Extension = {
    incoming(message, context) {
      // A message that already carries an error is refused as it is.
      if (message.error !== undefined) return message;
      if (message.channel === META.handshake) return handshake(message, context);
      if (message.channel === META.subscribe) return subscribe(message, context);
      if (isMeta(message.channel)) return message;
      return publish(message, context);
    },
  };
  if (compiled.some((rule) => rule.operations.has('handshake'))) {
    const refusedHandshake = bayeuxError('refusedByApplication');
    const failed = bayeuxError('refusedByApplication', [], NO_ANSWER);
    extension.outgoing = (message) => {
      if (message.channel !== META.handshake || message.successful !== false || typeof message.error !== 'string') return message;
      if (!message.error.startsWith(refusedHandshake) || message.error === failed) return message;
      return { ...message, advice: { reconnect: 'none' } };
    };
  }
  return extension;
}
