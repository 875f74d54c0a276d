/**
 * GET / of every example: a login form for strangers; for a logged-in user, a page that loads
 * Perihelion's browser client from /bayeux/client.js (the server serves it), connects with the
 * app's cookie and shows what is pushed to /notifications (this user only) and /news (everyone).
 */
export function page({ framework, user }) {
  const title = `Perihelion in ${framework}`;
  if (!user) {
    return `<!doctype html>
<meta charset="utf-8"><title>${title}</title>
<h1>${title}</h1>
<p>Log in to the app (any name of letters, digits, <code>-</code> or <code>_</code>; no password: a demo).</p>
<form id="login"><input name="user" value="42" pattern="[A-Za-z0-9_\\-]{1,64}" required> <button>Log in</button></form>
<script>
  document.getElementById('login').onsubmit = async (event) => {
    event.preventDefault();
    const user = new FormData(event.target).get('user');
    const response = await fetch('/login?user=' + encodeURIComponent(user), { method: 'POST' });
    if (response.ok) location.reload(); else alert(await response.text());
  };
</script>
`;
  }
  // `user` matched USER_NAME (sessions.mjs): safe in HTML and in a script string.
  return `<!doctype html>
<meta charset="utf-8"><title>${title}</title>
<h1>${title}</h1>
<p>Logged in as <b>${user}</b> <button id="logout">Log out</button> · Perihelion says you are <b id="whoami">…</b> · <span id="state">connecting</span></p>
<p><button id="notify">POST /notify/${user}</button> <button id="broadcast">POST /broadcast</button></p>
<ul id="log"></ul>
<script src="/bayeux/client.js"></script>
<script>
  function log(text) {
    const item = document.createElement('li');
    item.textContent = new Date().toLocaleTimeString() + ' ' + text;
    document.getElementById('log').prepend(item);
  }
  // One connection per tab (shared: false): a connection shared by the tabs would outlive a
  // logout and a login as someone else in another tab, and keep the first user's identity.
  const client = new Perihelion.Client('/bayeux', { shared: false });
  client.on('state', ({ state, reason }) => (document.getElementById('state').textContent = state + (reason ? ' (' + reason + ')' : '')));
  client.subscribe('/notifications', (data) => log('/notifications ' + JSON.stringify(data)));
  client.subscribe('/news', (data) => log('/news ' + JSON.stringify(data)));
  client.request('/service/whoami', {}).then(({ user }) => (document.getElementById('whoami').textContent = user));
  const post = async (path) => log(path + ' → ' + (await (await fetch(path, { method: 'POST' })).text()));
  document.getElementById('notify').onclick = () => post('/notify/${user}');
  document.getElementById('broadcast').onclick = () => post('/broadcast');
  document.getElementById('logout').onclick = async () => { await fetch('/logout', { method: 'POST' }); location.reload(); };
</script>
`;
}
