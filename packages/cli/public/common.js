// What every demo page shares: the client (with the transport the visitor picked), the
// connection bar at the foot of the page, and the banner shown while the connection is lost.
// Perihelion.Client comes from the server itself: <script src="/bayeux/client.js">.

const TRANSPORTS = ['websocket', 'eventsource', 'http-streaming', 'long-polling'];

/** The transport forced by `?transport=…`, or null for the client's own choice. */
function forcedTransport() {
  const value = new URLSearchParams(location.search).get('transport');
  return TRANSPORTS.includes(value) ? value : null;
}

/**
 * Creates the page's client and wires the connection bar and the offline banner.
 * By default every tab of this site shares one connection (a SharedWorker holds it); a forced
 * transport gives the tab a connection of its own, so that it really uses that transport.
 */
export function startClient() {
  const forced = forcedTransport();
  const client = new Perihelion.Client('/bayeux', forced ? { transports: [forced], shared: false } : {});

  const dot = document.getElementById('conn-dot');
  const state = document.getElementById('conn-state');
  const transport = document.getElementById('transport');
  const sharing = document.getElementById('sharing');
  const banner = document.getElementById('offline');
  const select = document.getElementById('transport-select');

  select.value = forced ?? '';
  select.addEventListener('change', () => {
    const url = new URL(location.href);
    if (select.value) url.searchParams.set('transport', select.value);
    else url.searchParams.delete('transport');
    location.assign(url);
  });

  let everConnected = false;
  const show = () => {
    dot.className = `dot ${client.state}`;
    state.textContent = client.state;
    transport.textContent = client.transport ?? '…';
    sharing.textContent = {
      worker: 'one connection shared by every tab (SharedWorker)',
      leader: 'this tab holds the connection for every tab',
      follower: 'another tab holds the connection',
      off: 'this tab’s own connection',
    }[client.sharing] ?? '';
    // The browser knows at once when its network goes; the client only once a line fails (a
    // socket the browser keeps open says nothing until its deadline).
    banner.hidden = (client.state === 'connected' && navigator.onLine) || !everConnected;
    document.body.classList.toggle('is-offline', !banner.hidden);
  };
  client.on('state', ({ state: now }) => {
    if (now === 'connected') everConnected = true;
    show();
  });
  // A live session may move to a WebSocket later (one refused at first): the bar follows.
  client.on('transport', show);
  window.addEventListener('offline', show);
  window.addEventListener('online', show);
  client.on('error', (error) => console.warn('client:', error.message));
  show();
  return client;
}

/** A short, readable message for a failed call (the server's reason when it refused). */
export function reason(error) {
  if (error && error.code === 'bayeux') return error.message.replace(/^\/[^:]*: /, '');
  if (error && error.code === 'timeout') return 'The server did not answer in time; try again.';
  if (error && error.code === 'queue-full') return 'You are offline and too much is waiting to be sent.';
  return (error && error.message) || String(error);
}

/**
 * Replicates a state channel (PerihelionState, from <mount>/state.js), asking again every 2 s
 * while it cannot start (on a cluster, the node holding the channel may be gone for a moment
 * before another takes it over), saying why on `errorLine` meanwhile. Resolves to the replica.
 */
export async function replicateUntilReady(client, channel, errorLine) {
  for (;;) {
    try {
      const replica = await PerihelionState.replicate(client, channel);
      errorLine.textContent = '';
      return replica;
    } catch (error) {
      errorLine.textContent = `${reason(error)} (trying again)`;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

/** `time` (ms since 1970) as hh:mm:ss, in the visitor's locale. */
export function clock(time) {
  return new Date(time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A stable display name for this browser, kept in localStorage. */
export function myName() {
  let name = localStorage.getItem('perihelion-demo-name');
  if (!name) {
    const adjectives = ['swift', 'bright', 'quiet', 'icy', 'golden', 'distant', 'brave', 'curious'];
    const nouns = ['comet', 'orbit', 'nova', 'quasar', 'meteor', 'pulsar', 'nebula', 'aurora'];
    const pick = (list) => list[Math.floor(Math.random() * list.length)];
    name = `${pick(adjectives)}-${pick(nouns)}`;
    localStorage.setItem('perihelion-demo-name', name);
  }
  return name;
}

export function setMyName(name) {
  localStorage.setItem('perihelion-demo-name', name);
}
