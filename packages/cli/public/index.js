// The landing page: the connection bar, and two live figures from the demos running on the server.
import { startClient } from '/common.js';

const client = startClient();
const quote = document.getElementById('live-quote');
const job = document.getElementById('live-job');

client.subscribe('/demo/ticker/PERI', (q) => {
  const change = ((q.price - q.open) / q.open) * 100;
  quote.textContent = `PERI ${q.price.toFixed(2)} ${change >= 0 ? '▲' : '▼'} ${Math.abs(change).toFixed(2)} %`;
  quote.className = change >= 0 ? 'up' : 'down';
});

client.subscribe('/demo/job', Perihelion.byType({
  started: (event) => { job.textContent = `${event.id} started`; },
  progress: (event) => { job.textContent = `${event.id} at ${event.percent} %`; },
  done: (event) => { job.textContent = `${event.id} done`; },
}));
