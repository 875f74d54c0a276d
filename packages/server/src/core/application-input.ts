/**
 * Checks of what the application hands the server's API (`publish`, `deliver`, `session.deliver`,
 * …): a mistake there is a `PerihelionError` for its caller, never a message that reaches clients
 * malformed.
 */
import { channelProblem, isMeta } from '@perihelion/protocol';
import { PerihelionError } from '../errors.js';

/**
 * A channel one session may be sent a message on: a valid name, no pattern, never a meta channel
 * (the client would take the message for the protocol's own: a connect reply, say).
 */
export function checkDeliveryChannel(channel: string, maxLength: number): void {
  const problem = channelProblem(channel, { allowWildcard: false, maxLength });
  if (problem) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot deliver on ${JSON.stringify(channel)}: ${problem}`);
  if (isMeta(channel)) throw new PerihelionError('ERR_INVALID_CHANNEL', `cannot deliver on the meta channel ${channel}`);
}

/**
 * A message's data must be there once serialised (Bayeux: a publish "MUST contain channel and
 * data"): `undefined`, a function or a symbol would vanish from the JSON and reach subscribers as
 * a message without data. What else JSON cannot hold (a BigInt, a cycle) is refused where the
 * message is serialised (publish.ts).
 */
export function checkData(data: unknown, what: string): void {
  const type = typeof data;
  if (type === 'undefined' || type === 'function' || type === 'symbol') {
    throw new PerihelionError('ERR_INVALID_ARGUMENT', `cannot ${what} ${type === 'undefined' ? 'without data' : `a ${type} as data`}: data is any JSON value (null included)`);
  }
}
