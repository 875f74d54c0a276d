// The slideshow: the slide on show is the state channel /demo/slides ({ slide }). Every page
// replicates it; the presenter (/slides?presenter) proposes the next slide. Anyone may present.
import { reason, replicateUntilReady, startClient } from '/common.js';

// What the slides say: what Comet is, in seven steps. The server checks the number (SLIDE_COUNT).
const SLIDES = [
  { title: 'Comet, in one sentence', body: ['<svg viewBox="0 0 420 120" role="img" aria-label="One server pushing to three screens"><circle cx="50" cy="60" r="34" fill="#f0a020"/><text x="50" y="65" text-anchor="middle" font-size="14" fill="#1d2b53" font-weight="700">server</text><g stroke="#3451b2" stroke-width="3" fill="none"><path d="M92 60 L290 20"/><path d="M92 60 L290 60"/><path d="M92 60 L290 100"/></g><g fill="#1d2b53"><rect x="300" y="6" width="56" height="30" rx="4"/><rect x="300" y="46" width="56" height="30" rx="4"/><rect x="300" y="86" width="56" height="30" rx="4"/></g></svg>', '<p>The server sends the news the moment it happens, to every browser that cares, without being asked.</p>'] },
  { title: 'Before: polling', body: ['<p>“Anything new?” “No.” “Anything new?” “No.” “Anything new?” “Yes, since 4 seconds.”</p>', '<p>Slow to notice, and most requests are wasted.</p>'] },
  { title: 'Comet: the server holds the line', body: ['<ul><li><strong>WebSocket</strong>: one socket, both ways.</li><li><strong>Server-Sent Events</strong> and <strong>HTTP streaming</strong>: one long response.</li><li><strong>Long-polling</strong>: the server answers a request only when it has news.</li></ul>', '<p>The client picks the best one the network allows.</p>'] },
  { title: 'Bayeux: channels', body: ['<p>Everything is a message on a channel: <code>/chat/lobby</code>, <code>/demo/ticker/PERI</code>, <code>/demo/slides</code>.</p>', '<p>Subscribe to a channel (or <code>/demo/ticker/*</code>), publish to it, and the server fans the message out.</p>'] },
  { title: 'Nothing missed', body: ['<p>Every message has a position. A browser that lost its line for a minute tells the server where it was, and gets what it missed, in order, before anything new.</p>', '<p>Try it on the Job page: go offline halfway.</p>'] },
  { title: 'State channels', body: ['<p>This slide number is a tiny JSON value on the server. The presenter proposes a change; the server checks it and sends a patch to every screen.</p>', '<p>Open the page late: you start on the current slide.</p>'] },
  { title: 'That’s Comet', body: ['<p class="big" aria-hidden="true">✓</p>', '<p>Now open the chat, the ticker or the board in two windows side by side.</p>'] },
];

const presenter = new URLSearchParams(location.search).has('presenter');
const client = startClient();
const slideEl = document.getElementById('slide');
const dots = document.getElementById('dots');
const position = document.getElementById('position');
const controls = document.getElementById('controls');
const prev = document.getElementById('prev');
const next = document.getElementById('next');
const errorLine = document.getElementById('error');

document.getElementById('role').textContent = presenter ? 'presenter' : 'audience';
const switchRole = document.getElementById('switch-role');
const params = new URLSearchParams(location.search);
if (presenter) params.delete('presenter');
else params.set('presenter', '');
const query = params.toString().replace(/(^|&)presenter=(?=&|$)/, '$1presenter');
switchRole.href = `/slides${query ? `?${query}` : ''}`;
switchRole.textContent = presenter ? 'Watch as the audience' : 'Present instead';
if (presenter) {
  document.getElementById('intro').textContent = 'You are presenting: every screen on /slides follows you. Use the buttons or the arrow keys. (In this demo anyone may present.)';
  controls.hidden = false;
}
for (let i = 0; i < SLIDES.length; i++) dots.append(document.createElement('span'));

let replica = null;

function show(slide) {
  const content = SLIDES[slide] ?? SLIDES[0];
  const heading = document.createElement('h2');
  heading.textContent = content.title;
  // The slides' own markup, written above: nothing from the network becomes HTML.
  const body = document.createElement('div');
  body.innerHTML = content.body.join('');
  slideEl.replaceChildren(heading, body);
  slideEl.dataset.slide = String(slide);
  position.textContent = `Slide ${slide + 1} of ${SLIDES.length}`;
  [...dots.children].forEach((dot, i) => dot.classList.toggle('on', i === slide));
  prev.disabled = slide === 0;
  next.disabled = slide === SLIDES.length - 1;
}

function go(delta) {
  if (!replica) return;
  const target = replica.value.slide + delta;
  if (target < 0 || target >= SLIDES.length) return;
  errorLine.textContent = '';
  // Shown at once here; the other screens move when the server has accepted it.
  replica.propose((draft) => { draft.slide = target; }).catch((error) => {
    // Two presenters at once: the other one's move won, and is on screen. Anything else is worth saying.
    if (error.cause?.bayeuxCode !== 409) errorLine.textContent = reason(error.cause ?? error);
  });
}

prev.addEventListener('click', () => go(-1));
next.addEventListener('click', () => go(1));
if (presenter) {
  document.addEventListener('keydown', (event) => {
    // Form fields keep their keys, and Space on a focused button is that button's click.
    if (event.target.closest('input, select, textarea')) return;
    if (event.key === ' ' && event.target.closest('button, a')) return;
    if (event.key === 'ArrowRight' || event.key === 'PageDown' || event.key === ' ') go(1);
    else if (event.key === 'ArrowLeft' || event.key === 'PageUp') go(-1);
    else return;
    event.preventDefault();
  });
}

replicateUntilReady(client, '/demo/slides', errorLine).then((r) => {
  replica = r;
  show(r.value.slide);
  r.onChange(({ value }) => show(value.slide));
});
window.demo = { client };
