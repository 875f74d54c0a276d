/**
 * The client's errors. Two kinds, both with a stable `code`:
 * - `bayeux`: the server refused (the reply's `error` string is in `bayeux`, parsed into
 *   `bayeuxCode`, `args` and `message`);
 * - the client's own: `timeout`, `disconnected`, `queue-full`, `no-transport`, `invalid-channel`,
 *   `handshake-denied`.
 */
import { parseError } from '@perihelion/protocol';

export type ClientErrorCode = 'bayeux' | 'timeout' | 'disconnected' | 'queue-full' | 'no-transport' | 'invalid-channel' | 'handshake-denied';

export class ClientError extends Error {
  override readonly name = 'ClientError';
  /** The server's `code:args:message` string, for `bayeux` errors. */
  readonly bayeux: string | undefined;
  /** The numeric Bayeux code (402, 403, …), for `bayeux` errors. */
  readonly bayeuxCode: number | undefined;

  constructor(
    readonly code: ClientErrorCode,
    message: string,
    bayeux?: string,
  ) {
    super(message);
    this.bayeux = bayeux;
    this.bayeuxCode = bayeux === undefined ? undefined : parseError(bayeux)?.code;
  }

  /** The error of an unsuccessful reply. */
  static fromReply(reply: { channel: string; error?: unknown }): ClientError {
    const wire = typeof reply.error === 'string' ? reply.error : undefined;
    const parsed = wire === undefined ? null : parseError(wire);
    return new ClientError('bayeux', parsed ? `${reply.channel}: ${parsed.message}` : `${reply.channel}: ${wire ?? 'refused by the server'}`, wire ?? '');
  }
}
