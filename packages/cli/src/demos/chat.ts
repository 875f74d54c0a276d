/**
 * The chat demo (/chat): rooms, who is here, who is typing, and the last messages on joining.
 *
 * - Pages publish their messages on /chat/<room> and "I am typing" on /chat/<room>/typing
 *   themselves; an incoming extension checks both (a known room, a name, a text of sane length)
 *   and stamps the server's time and the sender's session on them.
 * - Who is here is the server's presence of /chat/<room> (`client.presence`, `client.onPresence`).
 *   Sessions are anonymous, so presence knows session ids only: a page tells the server its
 *   display name (/service/chat/hello) and looks names up (/service/chat/names); a new name is
 *   announced on /demo/chat/names.
 * - The last messages come from the channel's history (/service/chat/history → `server.history`).
 */
import { bayeuxError } from '@perihelion/protocol';
import type { ChannelRule, Message, Perihelion } from '@perihelion/server';
import { badRequest, isRecord, text, unexpectedKeys } from './check.js';

export const ROOMS = ['lobby', 'comet', 'random'] as const;
export const MAX_NAME = 40;
export const MAX_TEXT = 500;
/** Messages a page gets when it joins a room. */
export const HISTORY_ON_JOIN = 30;
const NAME_KEY = 'demo.chat.name';
/** Where the server announces that a session changed its display name: `{ clientId, name }`. */
export const NAMES_CHANNEL = '/demo/chat/names';

export const CHAT_RULES: ChannelRule[] = [
  { channel: '/chat/{room}', publish: 'anyone' },
  { channel: '/chat/{room}/typing', publish: 'anyone' },
  { channel: '/service/chat/hello', publish: 'anyone' },
  { channel: '/service/chat/names', publish: 'anyone' },
  { channel: '/service/chat/history', publish: 'anyone' },
];

function isRoom(room: unknown): room is (typeof ROOMS)[number] {
  return typeof room === 'string' && (ROOMS as readonly string[]).includes(room);
}

/** What a page may publish on a /chat channel, checked; the message to pass on, or the refusal to send back. */
export function checkChatPublish(message: Message, sessionId: string): Message {
  const { channel } = message;
  const refuse = (detail: string): Message => ({ ...message, error: bayeuxError('badRequest', [channel], detail) });
  const parts = channel.split('/'); // ['', 'chat', room, 'typing'?]
  const room = parts[2];
  const typing = parts.length === 4 && parts[3] === 'typing';
  if (!isRoom(room) || (parts.length !== 3 && !typing)) return refuse(`unknown room; the rooms are ${ROOMS.join(', ')}`);
  const data = message.data;
  if (!isRecord(data)) return refuse('data must be an object');
  const extra = unexpectedKeys(data, typing ? ['name'] : ['name', 'text']);
  if (extra.length > 0) return refuse(`unexpected field ${JSON.stringify(extra[0])}`);
  const name = text(data.name, 'name', MAX_NAME);
  if (typeof name !== 'string') return refuse(name.error);
  if (typing) return { ...message, data: { name, from: sessionId } };
  const said = text(data.text, 'text', MAX_TEXT);
  if (typeof said !== 'string') return refuse(said.error);
  return { ...message, data: { name, text: said, at: Date.now(), from: sessionId } };
}

export function installChat(server: Perihelion): void {
  server.addExtension({
    incoming(message, { session }) {
      // Publishes only: subscriptions travel on /meta/subscribe; the server's own publishes skip incoming hooks.
      if (!message.channel.startsWith('/chat/') || session === null) return message;
      const checked = checkChatPublish(message, session.id);
      if (checked.error === undefined) session.data.set(NAME_KEY, (checked.data as { name: string }).name);
      return checked;
    },
  });

  server.subscribe('/service/chat/hello', async (message, session) => {
    const data = message.data;
    if (!isRecord(data)) return badRequest(message.channel, 'data must be an object: { name }');
    const name = text(data.name, 'name', MAX_NAME);
    if (typeof name !== 'string') return badRequest(message.channel, name.error);
    if (!session) return badRequest(message.channel, 'no session');
    const before = session.data.get(NAME_KEY);
    session.data.set(NAME_KEY, name);
    // A new name is news for the pages that show this session as a member.
    if (before !== undefined && before !== name) await server.publish(NAMES_CHANNEL, { clientId: session.id, name });
    return { clientId: session.id, name };
  });

  server.subscribe('/service/chat/names', (message) => {
    const data = message.data;
    const ids = isRecord(data) ? data.clientIds : undefined;
    if (!Array.isArray(ids) || ids.length > 200 || !ids.every((id) => typeof id === 'string' && id.length <= 64)) {
      return badRequest(message.channel, 'data must be { clientIds: [...] }, at most 200 session ids');
    }
    const names: Record<string, string | null> = {};
    for (const id of ids as string[]) {
      const name = server.getSession(id)?.data.get(NAME_KEY);
      names[id] = typeof name === 'string' ? name : null;
    }
    return { names };
  });

  server.subscribe('/service/chat/history', async (message) => {
    const data = message.data;
    const room = isRecord(data) ? data.room : undefined;
    if (!isRoom(room)) return badRequest(message.channel, `data must be { room }, one of ${ROOMS.join(', ')}`);
    const page = await server.history(`/chat/${room}`, { limit: HISTORY_ON_JOIN });
    return {
      room,
      // Each with its position, so that the page can tell them from the live messages it already has.
      messages: (page?.messages ?? []).map((m) => ({ data: m.data, offset: (m.ext?.position as { offset?: number } | undefined)?.offset ?? null })),
    };
  });
}
