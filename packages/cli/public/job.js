// The job: a button starts a long job on the server; its progress arrives on /demo/job as typed
// events (started, progress, done), in every tab. After a lost connection the client recovers
// the events it missed from the channel's history, so the bar catches up and the job finishes.
import { clock, reason, startClient } from '/common.js';

const client = startClient();
const form = document.getElementById('start');
const startButton = document.getElementById('start-button');
const seconds = document.getElementById('seconds');
const errorLine = document.getElementById('error');
const title = document.getElementById('job-title');
const bar = document.getElementById('bar');
const step = document.getElementById('step');
const percentEl = document.getElementById('percent');
const events = document.getElementById('events');

let job = null; // { id, percent, state }

function render() {
  if (!job) return;
  title.textContent = job.state === 'done' ? `Job ${job.id}: done` : `Job ${job.id}: running`;
  bar.firstElementChild.style.width = `${job.percent}%`;
  bar.setAttribute('aria-valuenow', String(job.percent));
  bar.classList.toggle('done', job.state === 'done');
  percentEl.textContent = `${job.percent} %`;
  step.textContent = job.step;
  startButton.disabled = job.state === 'running';
}

function logEvent(event, text) {
  const item = document.createElement('li');
  // An event that reaches us well after the server sent it was replayed after a reconnection.
  const late = Date.now() - event.at;
  if (late > 1500) {
    item.className = 'replayed';
    text += ` (caught up ${(late / 1000).toFixed(1)} s late)`;
  }
  item.textContent = `${clock(event.at)} ${text}`;
  events.prepend(item);
  while (events.children.length > 80) events.lastElementChild.remove();
}

/** Takes what an event or the status says, unless it is older than what is shown. */
function update(next) {
  if (job && next.id < job.id) return;
  if (job && next.id === job.id && (job.state === 'done' || next.percent < job.percent)) return;
  job = { id: next.id, state: next.state, percent: next.percent, step: next.step };
  render();
}

async function start() {
  // byType: one handler per kind of event; kinds this page does not know are ignored.
  await client.subscribe('/demo/job', Perihelion.byType({
    started: (event) => {
      logEvent(event, `job ${event.id} started (${event.seconds} s)`);
      update({ id: event.id, state: 'running', percent: 0, step: event.step });
    },
    progress: (event) => {
      logEvent(event, `job ${event.id}: ${event.percent} %, ${event.step}`);
      update({ id: event.id, state: 'running', percent: event.percent, step: event.step });
    },
    done: (event) => {
      logEvent(event, `job ${event.id} done in ${((event.finishedAt - event.startedAt) / 1000).toFixed(1)} s`);
      update({ id: event.id, state: 'done', percent: 100, step: event.step });
    },
  }), {
    onRecover: (recovered) => {
      // The history no longer held everything missed: ask where the job stands instead.
      if (!recovered) status().catch((error) => { errorLine.textContent = reason(error); });
    },
  });
  await status();
}

async function status() {
  const { job: current } = await client.request('/service/job/status', {});
  if (current) update(current);
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  errorLine.textContent = '';
  startButton.disabled = true;
  client.request('/service/job/start', { seconds: Number(seconds.value) }).then(update, (error) => {
    errorLine.textContent = reason(error);
    startButton.disabled = job?.state === 'running';
  });
});

start().catch((error) => {
  errorLine.textContent = reason(error);
});
window.demo = { client };
