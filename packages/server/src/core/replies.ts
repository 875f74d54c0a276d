/**
 * Replies to clients' messages, built the same way by every handler (Bayeux §Responses): the
 * channel, the request's `id` echoed (§id: replies to /meta MUST carry it) and its `clientId`
 * echoed (§3.5: "MUST be returned in every message response except for a failed handshake").
 * Every reply passes the outgoing extensions on its way out.
 */
import { randomUUID } from 'node:crypto';
import { bayeuxError, type Advice, type Message } from '@perihelion/protocol';
import type { ExtensionContext, ExtensionPipeline } from '../extensions/pipeline.js';
import { answerTimesync } from '../extensions/timesync.js';
import type { ResolvedOptions } from '../options.js';

export type Reply = Message;

/**
 * The common reply fields: channel, id echoed (§id), clientId echoed (§3.5), and the answer to the
 * CometD timesync extension when the request asked (extensions/timesync.ts). Built when the reply
 * is due, so a held /meta/connect's answer counts the hold.
 */
export function reply(message: Message, successful: boolean): Reply {
  const out: Reply = { channel: message.channel, successful };
  if (message.id !== undefined) out.id = message.id;
  if (message.clientId !== undefined) out.clientId = message.clientId;
  if (message.ext !== undefined) {
    const timesync = answerTimesync(message, Date.now());
    if (timesync) out.ext = { timesync };
  }
  return out;
}

/** A reply to a message that could not be read or was refused before any handler ran. */
export function refusal(value: unknown, error: string, advice?: Advice): Reply {
  const message = value as Partial<Message> | null;
  const channel = typeof message?.channel === 'string' ? message.channel : '/meta/unknown';
  const out: Reply = { channel, successful: false, error };
  if (typeof message?.id === 'string' || typeof message?.id === 'number') out.id = message.id;
  if (typeof message?.clientId === 'string') out.clientId = message.clientId;
  if (advice) out.advice = advice;
  return out;
}

/** A message naming no session, or one that is gone (or that this request may not speak for). */
export function unknownClient(message: Message): Reply {
  const error = message.clientId === undefined ? bayeuxError('clientIdMissing') : bayeuxError('clientUnknown', [message.clientId]);
  // Both clients act on advice, not on the code: "handshake" makes them start a new session.
  return { ...reply(message, false), error, advice: { reconnect: 'handshake', interval: 0 } };
}

/** The advice of a successful handshake or held connect: complete, as CometD rebuilds it from its defaults (BAYEUX.md A28). */
export function advice(options: Pick<ResolvedOptions, 'interval' | 'timeout'>): Advice {
  return { reconnect: 'retry', interval: options.interval, timeout: options.timeout };
}

/**
 * Passes a reply through the outgoing extensions and adds it, serialised, to `out` (unless
 * dropped). Synchronous, making no promise, unless an extension answers with one: every reply to
 * every client passes here.
 */
export function emitReply(extensions: ExtensionPipeline, message: Reply, context: ExtensionContext, out: string[]): void | Promise<void> {
  const final = extensions.outgoing(message, context);
  if (final instanceof Promise) return final.then((settled) => void (settled && out.push(serialiseReply(settled))));
  if (final) out.push(serialiseReply(final));
}

/** The JSON of answers given to many clients alike (see `sharedAnswer`), by the answer. */
const serialisedAnswers = new WeakMap<object, string>();
/**
 * Stands for `data` while the rest of a reply is serialised; unguessable, so that nothing a client
 * sends (an id, an ext echoed) can be taken for it.
 */
const DATA_MARK_VALUE = `\u0000data:${randomUUID()}`;
const DATA_MARK = JSON.stringify(DATA_MARK_VALUE);

/**
 * Marks `answer` as one that many clients are given alike (a state channel's snapshot: every
 * replica asks for it after a restart): it is serialised here, once, and each reply that carries
 * it as its `data` splices that text in rather than serialising it again. The answer must not
 * change afterwards (an outgoing extension may replace a reply's `data`, not change it in place).
 */
export function sharedAnswer<T extends object>(answer: T): T {
  serialisedAnswers.set(answer, JSON.stringify(answer));
  return answer;
}

function serialiseReply(message: Reply): string {
  const data = message.data;
  const text = typeof data === 'object' && data !== null ? serialisedAnswers.get(data) : undefined;
  if (text === undefined) return JSON.stringify(message);
  return JSON.stringify({ ...message, data: DATA_MARK_VALUE }).replace(DATA_MARK, () => text);
}
