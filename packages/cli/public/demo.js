// The demo page's client side: the CometD JavaScript client, unchanged, against Perihelion.
import { CometD } from '/vendor/cometd/cometd.js';

const endpoint = `${location.origin}/bayeux`;
document.getElementById('endpoint').textContent = endpoint;
const statusEl = document.getElementById('status');
const transportEl = document.getElementById('transport');
const log = document.getElementById('log');
const nameInput = document.getElementById('name');
nameInput.value = localStorage.getItem('perihelion-demo-name') || `guest-${Math.floor(Math.random() * 1000)}`;

const cometd = new CometD();
cometd.configure({ url: endpoint, logLevel: 'warn' });

function setStatus(connected) {
  statusEl.textContent = connected ? 'connected' : 'disconnected';
  statusEl.className = connected ? 'connected' : 'disconnected';
  const transport = cometd.getTransport();
  transportEl.textContent = connected && transport ? `(over ${transport.type})` : '';
}

function show(who, text) {
  const item = document.createElement('li');
  const name = document.createElement('span');
  name.className = 'who';
  name.textContent = who;
  item.append(name, document.createTextNode(text));
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

let wasConnected = false;
cometd.addListener('/meta/connect', (reply) => {
  if (cometd.isDisconnected()) return;
  if (reply.successful !== wasConnected) {
    wasConnected = reply.successful === true;
    setStatus(wasConnected);
  }
});

cometd.addListener('/meta/handshake', (reply) => {
  if (!reply.successful) return;
  // Subscriptions do not survive a new session: make them again after every handshake.
  cometd.batch(() => {
    cometd.subscribe('/chat/demo', (message) => show(`${message.data.user}:`, message.data.text));
    cometd.subscribe('/demo/counter', (message) => {
      document.getElementById('count').textContent = String(message.data.count);
    });
  });
  counter('read');
});

function counter(op) {
  cometd.remoteCall('counter', { op }, 5000, (reply) => {
    // Changes arrive on /demo/counter, in order; the reply only seeds the first value.
    if (reply.successful && op === 'read') document.getElementById('count').textContent = String(reply.data.count);
  });
}

document.getElementById('chat').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = document.getElementById('text');
  const text = input.value.trim();
  if (!text) return;
  const user = nameInput.value.trim() || 'guest';
  localStorage.setItem('perihelion-demo-name', user);
  cometd.publish('/chat/demo', { user, text });
  input.value = '';
});
document.getElementById('increment').addEventListener('click', () => counter('increment'));
document.getElementById('reset').addEventListener('click', () => counter('reset'));

cometd.handshake();
window.demo = { cometd };
