/**
 * The shared board demo (/board): a list everyone edits together, kept in a state channel,
 * /demo/board. Pages replicate it (`PerihelionState.replicate(client, '/demo/board')`) and
 * propose their changes (add, tick, rename, remove, reorder); the server checks each proposal's
 * result against the rules below before it is applied and published to every replica.
 */
import type { Perihelion, StateChannel } from '@perihelion/server';
import { isRecord, text, unexpectedKeys } from './check.js';

export const BOARD_CHANNEL = '/demo/board';
export const MAX_ITEMS = 200;
export const MAX_ITEM_TEXT = 200;
const ID = /^[A-Za-z0-9_-]{1,40}$/;

export type BoardItem = { id: string; text: string; done: boolean };

export const INITIAL_BOARD: BoardItem[] = [
  { id: 'welcome', text: 'Open this page in a second window and tick me', done: false },
  { id: 'add', text: 'Add an item: it shows up everywhere at once', done: false },
  { id: 'order', text: 'Move items up and down with the arrows', done: true },
];

/** A proposed board: true, or why it is refused. */
export function checkBoard(next: unknown): true | string {
  if (!Array.isArray(next)) return 'the board must be a list';
  if (next.length > MAX_ITEMS) return `the board holds at most ${MAX_ITEMS} items`;
  const ids = new Set<string>();
  for (const [index, item] of next.entries()) {
    if (!isRecord(item)) return `item ${index} must be an object { id, text, done }`;
    const extra = unexpectedKeys(item, ['id', 'text', 'done']);
    if (extra.length > 0) return `item ${index}: unexpected field ${JSON.stringify(extra[0])}`;
    if (typeof item.id !== 'string' || !ID.test(item.id)) return `item ${index}: id must be 1 to 40 letters, digits, - or _`;
    if (ids.has(item.id)) return `item ${index}: id ${item.id} is used twice`;
    ids.add(item.id);
    const checked = text(item.text, `item ${index}: text`, MAX_ITEM_TEXT);
    if (typeof checked !== 'string') return checked.error;
    if (checked !== item.text) return `item ${index}: text must not start or end with spaces`;
    if (typeof item.done !== 'boolean') return `item ${index}: done must be true or false`;
  }
  return true;
}

export function installBoard(server: Perihelion): Promise<StateChannel<BoardItem[]>> {
  return server.state(BOARD_CHANNEL, INITIAL_BOARD.map((item) => ({ ...item })), {
    validate: ({ next }) => checkBoard(next),
    diff: { key: 'id' },
  });
}
