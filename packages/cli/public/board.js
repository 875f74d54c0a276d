// The shared board: a list in the state channel /demo/board, replicated with PerihelionState
// (<script src="/bayeux/state.js">). Changes are proposals: shown at once, checked by the server,
// and sent to every other replica as JSON patches. Items: { id, text, done }.
import { reason, replicateUntilReady, startClient } from '/common.js';

const MAX_ITEMS = 200;
const MAX_TEXT = 200;
const client = startClient();
const list = document.getElementById('items');
const form = document.getElementById('add');
const input = document.getElementById('text');
const errorLine = document.getElementById('error');
const count = document.getElementById('count');
const clearDone = document.getElementById('clear-done');

let replica = null;
const rows = new Map(); // item id → its <li>

function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * Proposes a change made by `edit` on a draft of the list. Edits find items by id, so when
 * someone else's change crossed ours (the server answers 409) the same edit is simply made
 * again on the new list.
 */
async function change(edit) {
  if (!replica) return;
  errorLine.textContent = '';
  for (let attempt = 1; ; attempt++) {
    try {
      await replica.propose(edit);
      render(replica.value); // "saving…" goes
      return;
    } catch (error) {
      if (error.cause?.bayeuxCode === 409 && attempt < 4) continue;
      errorLine.textContent = reason(error.cause ?? error);
      return;
    }
  }
}

const indexOf = (draft, id) => draft.findIndex((item) => item.id === id);

function button(label, text, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'icon-button';
  b.textContent = text;
  b.setAttribute('aria-label', label);
  b.title = label;
  b.addEventListener('click', onClick);
  return b;
}

function rowFor(id) {
  const li = document.createElement('li');
  li.dataset.id = id;
  const label = document.createElement('label');
  const box = document.createElement('input');
  box.type = 'checkbox';
  box.addEventListener('change', () => {
    // What the visitor asked for, kept: a refused proposal rolls the box back before the retry.
    const done = box.checked;
    change((draft) => {
      const i = indexOf(draft, id);
      if (i >= 0) draft[i].done = done;
    });
  });
  const text = document.createElement('span');
  label.append(box, text);
  const move = (delta) => () => change((draft) => {
    const i = indexOf(draft, id);
    const j = i + delta;
    if (i < 0 || j < 0 || j >= draft.length) return;
    const [item] = draft.splice(i, 1);
    draft.splice(j, 0, item);
  });
  li.append(label, button('Move up', '↑', move(-1)), button('Move down', '↓', move(1)), button('Remove', '✕', () => change((draft) => {
    const i = indexOf(draft, id);
    if (i >= 0) draft.splice(i, 1);
  })));
  return li;
}

/** Brings the list on screen in line with `items`, touching only what changed (focus stays put). */
function render(items) {
  const focus = focusInList();
  const seen = new Set();
  items.forEach((item, index) => {
    seen.add(item.id);
    let li = rows.get(item.id);
    if (!li) {
      li = rowFor(item.id);
      rows.set(item.id, li);
    }
    const [up, down, remove] = li.querySelectorAll('button');
    li.querySelector('span').textContent = item.text;
    li.querySelector('input').checked = item.done;
    li.classList.toggle('done', item.done);
    up.disabled = index === 0;
    down.disabled = index === items.length - 1;
    up.setAttribute('aria-label', `Move “${item.text}” up`);
    down.setAttribute('aria-label', `Move “${item.text}” down`);
    remove.setAttribute('aria-label', `Remove “${item.text}”`);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
  });
  for (const [id, li] of rows) {
    if (!seen.has(id)) {
      li.remove();
      rows.delete(id);
    }
  }
  const done = items.filter((item) => item.done).length;
  count.textContent = `${items.length} item${items.length === 1 ? '' : 's'}, ${done} ticked · version ${replica.version}${replica.pendingCount ? ' · saving…' : ''}`;
  clearDone.disabled = done === 0;
  focus.restore();
}

/**
 * Keeps the keyboard where it was across a render: moving a row in the list (or disabling its
 * button at the top or bottom, or removing it) would otherwise send the focus back to the page's
 * start. It goes back to the same control, else to another control of its row, else to the row
 * that took the removed one's place, else to the input.
 */
function focusInList() {
  const focused = document.activeElement;
  const row = focused instanceof HTMLElement && list.contains(focused) ? focused.closest('li') : null;
  if (!row) return { restore() {} };
  const index = [...list.children].indexOf(row);
  return {
    restore() {
      if (document.activeElement === focused) return;
      if (focused.isConnected && !focused.disabled) return focused.focus();
      if (row.isConnected) return (row.querySelector('button:not(:disabled)') ?? row.querySelector('input')).focus();
      const neighbour = list.children[Math.min(index, list.children.length - 1)];
      (neighbour?.querySelector('input') ?? input).focus();
    },
  };
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  if ([...text].length > MAX_TEXT) {
    errorLine.textContent = `An item holds at most ${MAX_TEXT} characters.`;
    return;
  }
  if (replica && replica.value.length >= MAX_ITEMS) {
    errorLine.textContent = `The board is full (${MAX_ITEMS} items): remove some first.`;
    return;
  }
  input.value = '';
  change((draft) => { draft.push({ id: newId(), text, done: false }); });
});

clearDone.addEventListener('click', () => {
  change((draft) => draft.filter((item) => !item.done));
  // The button is disabled now that nothing is ticked: the keyboard goes on to the input.
  if (clearDone.disabled && document.activeElement !== input) input.focus();
});

replicateUntilReady(client, '/demo/board', errorLine).then((r) => {
  replica = r;
  render(r.value);
  r.onChange(({ value }) => render(value));
});
window.demo = { client, get replica() { return replica; } };
