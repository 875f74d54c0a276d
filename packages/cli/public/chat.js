// The chat: rooms, who is here (the server's presence), who is typing, and the last messages on joining.
import { clock, myName, reason, setMyName, startClient } from '/common.js';

const client = startClient();
const log = document.getElementById('log');
const typingLine = document.getElementById('typing');
const membersList = document.getElementById('members');
const memberCount = document.getElementById('member-count');
const errorLine = document.getElementById('error');
const textInput = document.getElementById('text');
const nameInput = document.getElementById('name');
nameInput.value = myName();

let room = null;
let joinRun = 0; // a newer join makes the callbacks of an older one do nothing
let subscriptions = [];
const names = new Map(); // session id → display name (presence knows sessions; names come from the server)
let members = new Set(); // session ids in the room
let typers = new Map(); // session id → { name, until }
let shown = new Set(); // message offsets already on screen

function fail(error) {
  errorLine.textContent = reason(error);
}

// ---------------------------------------------------------------- messages

function show(data, offset, { earlier = false } = {}) {
  if (offset !== null && offset !== undefined) {
    if (shown.has(offset)) return;
    shown.add(offset);
  }
  if (data.from) names.set(data.from, data.name);
  const item = document.createElement('li');
  if (earlier) item.className = 'history';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = clock(data.at);
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = data.name;
  item.append(time, who, document.createTextNode(data.text));
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.querySelector('[data-empty]')?.remove(); // "Nothing said yet" is no longer true
  log.append(item);
  if (atBottom || !earlier) log.scrollTop = log.scrollHeight;
  if (data.from && typers.delete(data.from)) showTypers();
}

function note(text, { empty = false } = {}) {
  const item = document.createElement('li');
  item.className = 'earlier';
  if (empty) item.dataset.empty = '';
  item.textContent = text;
  log.append(item);
}

// ---------------------------------------------------------------- who is here, who is typing

function showMembers() {
  membersList.replaceChildren();
  const sorted = [...members].map((id) => ({ id, name: names.get(id) ?? 'someone joining…' })).sort((a, b) => a.name.localeCompare(b.name));
  for (const { id, name } of sorted) {
    const item = document.createElement('li');
    item.append(document.createTextNode(name));
    if (id === client.clientId) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      item.append(you);
    }
    membersList.append(item);
  }
  memberCount.textContent = `(${members.size})`;
}

/** Asks the server for the names of sessions it has not told us yet; asks once more for late namers. */
async function learnNames(ids, retry = true) {
  const unknown = ids.filter((id) => !names.has(id));
  if (unknown.length === 0) return showMembers();
  const { names: found } = await client.request('/service/chat/names', { clientIds: unknown });
  for (const [id, name] of Object.entries(found)) if (name) names.set(id, name);
  showMembers();
  if (retry && unknown.some((id) => !names.has(id))) setTimeout(() => learnNames(ids, false).catch(fail), 1500);
}

function showTypers() {
  const now = Date.now();
  for (const [id, typer] of typers) if (typer.until <= now) typers.delete(id);
  const who = [...typers.values()].map((t) => t.name);
  typingLine.textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.slice(0, -1).join(', ')} and ${who.at(-1)} are typing…`;
}
setInterval(showTypers, 500);

let lastTypingSent = 0;
textInput.addEventListener('input', () => {
  if (!room || textInput.value.trim() === '' || Date.now() - lastTypingSent < 2000) return;
  lastTypingSent = Date.now();
  // echo: false, so that this browser does not see itself typing.
  client.publish(`/chat/${room}/typing`, { name: nameInput.value.trim() || myName() }, { ext: { echo: false } }).catch(() => {});
});

// ---------------------------------------------------------------- joining a room

async function join(next) {
  const run = ++joinRun;
  const old = subscriptions;
  subscriptions = [];
  await Promise.all(old.map((s) => s.unsubscribe().catch(() => {})));
  if (run !== joinRun) return;
  room = next;
  for (const button of document.querySelectorAll('[data-room]')) button.setAttribute('aria-pressed', String(button.dataset.room === room));
  log.replaceChildren();
  members = new Set();
  typers = new Map();
  shown = new Set();
  showMembers();
  showTypers();
  errorLine.textContent = '';

  // Subscribe first, then read the history: live messages that arrive meanwhile wait in `held`,
  // and the offsets tell which of them the history already had.
  let held = [];
  const channel = `/chat/${room}`;
  const current = () => run === joinRun;
  subscriptions.push(await client.subscribe(channel, (data, message) => {
    if (!current()) return;
    const offset = message.ext?.position?.offset ?? null;
    if (held) held.push({ data, offset });
    else show(data, offset);
  }, {
    onRecover: (recovered) => {
      if (current() && !recovered) note('Some messages were lost while you were away.');
    },
  }));
  subscriptions.push(await client.subscribe(`${channel}/typing`, (data) => {
    if (!current()) return;
    typers.set(data.from, { name: data.name, until: Date.now() + 3000 });
    names.set(data.from, data.name);
    showTypers();
  }));
  // Presence: follow joins and leaves first, then ask who is here, so that no event falls in between.
  subscriptions.push(await client.onPresence(channel, (event) => {
    if (!current()) return;
    if (event.action === 'join') {
      members.add(event.clientId);
      learnNames([event.clientId]).catch(fail);
    } else {
      members.delete(event.clientId);
      typers.delete(event.clientId);
      showMembers();
    }
  }));
  if (!current()) return;
  const present = await client.presence(channel);
  if (!current()) return;
  for (const member of present) members.add(member.clientId);
  await learnNames([...members]);

  const history = await client.request('/service/chat/history', { room });
  if (!current()) return;
  if (history.messages.length > 0) note(`The last ${history.messages.length} message${history.messages.length === 1 ? '' : 's'} of #${room}`);
  else note(`Nothing said in #${room} yet: be the first.`, { empty: true });
  for (const m of history.messages) show(m.data, m.offset, { earlier: true });
  for (const m of held) show(m.data, m.offset);
  held = null;
}

for (const button of document.querySelectorAll('[data-room]')) {
  button.addEventListener('click', () => join(button.dataset.room).catch(fail));
}

// ---------------------------------------------------------------- sending

document.getElementById('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  if (!text || !room) return;
  errorLine.textContent = '';
  textInput.value = '';
  lastTypingSent = 0;
  // The message shows when the server sends it back, like everyone else's: one order for all.
  client.publish(`/chat/${room}`, { name: nameInput.value.trim() || myName(), text }).catch((error) => {
    fail(error);
    if (!textInput.value) textInput.value = text;
  });
});

// The server knows sessions, not people: tell it our name (again after a new session).
async function hello() {
  const name = nameInput.value.trim();
  await client.request('/service/chat/hello', { name });
  if (client.clientId) names.set(client.clientId, name);
  showMembers();
}

document.getElementById('rename').addEventListener('submit', (event) => {
  event.preventDefault();
  errorLine.textContent = '';
  hello().then(() => setMyName(nameInput.value.trim()), fail);
});

let lastSession = null;
client.on('connected', () => {
  if (client.clientId && client.clientId !== lastSession) {
    const first = lastSession === null;
    lastSession = client.clientId;
    if (!first) hello().catch(fail);
  }
});

// Someone's new name.
client.subscribe('/demo/chat/names', ({ clientId, name }) => {
  names.set(clientId, name);
  showMembers();
}).catch(fail);

hello().then(() => join('lobby')).catch(fail);
window.demo = { client };
