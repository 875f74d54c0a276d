/**
 * Positions: where a message sits in its channel's history (Perihelion's extension to Bayeux).
 *
 * A delivered broadcast message carries `ext.position = {epoch, offset}`. Within one epoch the
 * offset grows by exactly one per message on the channel, so a client can tell a duplicate
 * (offset already seen) from a gap (offset skipped). A new epoch means the history was lost and
 * counting restarted. Standard CometD and Faye clients ignore unknown `ext` fields, so the field
 * costs them nothing (Bayeux §5.6: ext is free-form).
 */

export interface Position {
  /** Changes whenever the channel's history is lost; opaque to clients. */
  epoch: string;
  /** Number of messages published on the channel within this epoch; the first message is 1. */
  offset: number;
}

/** Longest epoch string accepted from a client. */
export const MAX_EPOCH_LENGTH = 64;

/** The position in `value` if it is a well-formed `{epoch, offset}`, else null. */
export function asPosition(value: unknown): Position | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const { epoch, offset } = value as { epoch?: unknown; offset?: unknown };
  if (typeof epoch !== 'string' || epoch.length === 0 || epoch.length > MAX_EPOCH_LENGTH) return null;
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) return null;
  return { epoch, offset };
}

/** "epoch:offset", the form used in URLs (`/api/history?since=`). */
export function formatPosition(position: Position): string {
  return `${position.epoch}:${position.offset}`;
}

/** Reads "epoch:offset"; null when malformed. */
export function parsePosition(text: string): Position | null {
  const at = text.lastIndexOf(':');
  if (at <= 0) return null;
  const offset = text.slice(at + 1);
  if (!/^\d{1,15}$/.test(offset)) return null;
  return asPosition({ epoch: text.slice(0, at), offset: Number(offset) });
}

/** A message serialised with its `ext` last (see `serialiseExtLast`). */
export interface Serialised {
  text: string;
  /** How `ext` was written: absent, or as a plain JSON object at the very end of `text`. */
  ext: 'none' | 'object' | 'other';
}

/**
 * Serialises a message with `channel` as its first member and `ext` as its last: a field can later
 * be added to `ext` by editing the end of the string (`addToExt`) instead of serialising the
 * message again, and the channel of the bytes can be told from their start (`isPositionedOn`).
 */
export function serialiseExtLast(message: object): Serialised {
  const fields = message as Record<string, unknown>;
  if (typeof fields.channel !== 'string' || !isPlainObject(message)) return reorderAndSerialise(message);
  // Written member by member, as JSON.stringify writes them, rather than through reordered copies
  // of the message: every publish comes this way once.
  let text = `{"channel":${JSON.stringify(fields.channel)}`;
  for (const key of Object.keys(fields)) {
    if (key === 'channel' || key === 'ext') continue;
    const value = JSON.stringify(fields[key]);
    if (value !== undefined) text += `,${key === 'data' ? '"data"' : JSON.stringify(key)}:${value}`;
  }
  const { ext } = fields;
  if (ext === undefined) return { text: `${text}}`, ext: 'none' };
  const extText = JSON.stringify(ext);
  if (extText === undefined) return { text: `${text}}`, ext: 'other' };
  return { text: `${text},"ext":${extText}}`, ext: isPlainObject(ext) ? 'object' : 'other' };
}

/** `serialiseExtLast` for what is not a plain message object: JSON.stringify of a reordered copy. */
function reorderAndSerialise(message: object): Serialised {
  const { channel, ext, ...rest } = message as { channel?: unknown; ext?: unknown };
  const ordered = { channel, ...rest };
  if (ext === undefined) return { text: JSON.stringify(ordered), ext: 'none' };
  return { text: JSON.stringify({ ...ordered, ext }), ext: isPlainObject(ext) ? 'object' : 'other' };
}

/** The end of a message whose `ext` ends with the position `addToExt` put there. */
const POSITION_AT_END = /"position":\{"epoch":"[^"\\]*","offset":\d+\}\}\}$/;

/**
 * Whether `payload` (made by `serialiseExtLast` and `addToExt`) is a message of `channel` that
 * carries a position: its start and its end say so, without parsing what lies between.
 */
export function isPositionedOn(channel: string, payload: string): boolean {
  return payload.startsWith(`{"channel":${JSON.stringify(channel)},`) && POSITION_AT_END.test(payload.slice(-(MAX_EPOCH_LENGTH + 64)));
}

/**
 * `serialised` with `"key": value` added to its `ext` (created if absent). `message` is the object
 * it was made from, serialised again only in the rare case of an `ext` that is not a plain object.
 * The key must not already be in `ext`.
 */
export function addToExt(serialised: Serialised, message: object, key: string, value: unknown): string {
  const member = `${JSON.stringify(key)}:${isPosition(value) ? `{"epoch":${JSON.stringify(value.epoch)},"offset":${value.offset}}` : JSON.stringify(value)}`;
  const { text } = serialised;
  switch (serialised.ext) {
    case 'none':
      return `${text.slice(0, -1)},"ext":{${member}}}`;
    case 'object':
      // The text ends with ext's closing brace and the message's; an empty ext ends `"ext":{}}`.
      return `${text.slice(0, -2)}${text.endsWith('"ext":{}}') ? '' : ','}${member}}}`;
    default:
      return serialiseExtLast({ ...message, ext: { [key]: value } }).text;
  }
}

/** A position as the engines make it (written without JSON.stringify's walk over the object). */
function isPosition(value: unknown): value is Position {
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) return false;
  const { epoch, offset } = value as { epoch?: unknown; offset?: unknown };
  return typeof epoch === 'string' && Number.isSafeInteger(offset) && Object.keys(value).length === 2;
}

/** An object whose JSON form is `{…}` with its own enumerable members (no toJSON, no class). */
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return (proto === Object.prototype || proto === null) && !('toJSON' in value);
}
