/**
 * Shape checks for one untrusted message. Channel-specific requirements (a handshake needs
 * `version` and `supportedConnectionTypes`, a connect needs `connectionType`, …) are checked where
 * each meta message is handled; this module only guarantees the field types every handler relies on.
 */
import { bayeuxError } from './errors.js';
import type { Message, MessageId } from './message.js';

export type Checked =
  | { ok: true; message: Message }
  | { ok: false; error: string; channel?: string; id?: MessageId };

const MAX_ID_LENGTH = 128;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function checkMessage(value: unknown): Checked {
  if (!isPlainObject(value)) {
    return { ok: false, error: bayeuxError('badRequest', [], 'each message must be a JSON object') };
  }
  const { channel, id, clientId, ext, advice } = value;
  const echoId = (typeof id === 'string' && id.length <= MAX_ID_LENGTH) || (typeof id === 'number' && Number.isFinite(id)) ? id : undefined;
  if (typeof channel !== 'string') return failed(channel, echoId, 'channel', 'every message needs a "channel" string');
  if (id !== undefined && echoId === undefined) {
    return failed(channel, echoId, 'id', `"id" must be a string of at most ${MAX_ID_LENGTH} characters or a number`);
  }
  if (clientId !== undefined && typeof clientId !== 'string') return failed(channel, echoId, 'clientId', '"clientId" must be a string');
  if (ext !== undefined && !isPlainObject(ext)) return failed(channel, echoId, 'ext', '"ext" must be an object');
  if (advice !== undefined && !isPlainObject(advice)) return failed(channel, echoId, 'advice', '"advice" must be an object');
  return { ok: true, message: value as Message };
}

/** A message refused for one field, echoing its channel and id where they can be (a function of its own: every message is checked, few fail). */
function failed(channel: unknown, echoId: string | number | undefined, field: string, detail: string): Checked {
  return {
    ok: false,
    error: bayeuxError('badRequest', [field], detail),
    ...(typeof channel === 'string' ? { channel } : {}),
    ...(echoId !== undefined ? { id: echoId } : {}),
  };
}

/** The `subscription` field of a subscribe/unsubscribe as a list, or null when it is malformed. */
export function subscriptionList(value: unknown): string[] | null {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.length > 0 && value.every((s) => typeof s === 'string')) return value as string[];
  return null;
}
