// The ticker: prices pushed by the server on /demo/ticker/<SYMBOL>, in a table and a chart.
// The server sends plain data ({ symbol, name, price, open, time }); everything shown is drawn here.
import { clock, reason, startClient } from '/common.js';

const POINTS = 120; // prices kept per symbol for the chart
const client = startClient();
const tbody = document.getElementById('quotes');
const canvas = document.getElementById('chart');
const title = document.getElementById('chart-title');
const figures = document.getElementById('chart-figures');
const rateLine = document.getElementById('rate');

const symbols = new Map(); // symbol → { quote, points: [{ price, time }], row }
let selected = 'PERI';
let updates = 0;

function percent(quote) {
  return ((quote.price - quote.open) / quote.open) * 100;
}

// ---------------------------------------------------------------- the table

function rowFor(quote) {
  const row = document.createElement('tr');
  row.dataset.symbol = quote.symbol;
  const cell = (className = '') => {
    const td = document.createElement('td');
    td.className = className;
    row.append(td);
    return td;
  };
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'symbol';
  button.textContent = quote.symbol;
  button.addEventListener('click', () => select(quote.symbol));
  cell().append(button);
  cell('wide-only').textContent = quote.name;
  cell('num price');
  cell('num change');
  cell('num time muted wide-only');
  tbody.append(row);
  return row;
}

function showRow(entry, previous) {
  const { quote, row } = entry;
  const change = percent(quote);
  row.querySelector('.price').textContent = quote.price.toFixed(2);
  const changeCell = row.querySelector('.change');
  changeCell.textContent = `${change >= 0 ? '▲' : '▼'} ${Math.abs(change).toFixed(2)} %`;
  changeCell.className = `num change ${change >= 0 ? 'up' : 'down'}`;
  row.querySelector('.time').textContent = clock(quote.time);
  if (previous !== undefined && previous !== quote.price) {
    const cell = row.querySelector('.price');
    cell.classList.remove('flash-up', 'flash-down');
    void cell.offsetWidth; // restart the animation
    cell.classList.add(quote.price > previous ? 'flash-up' : 'flash-down');
  }
}

function select(symbol) {
  selected = symbol;
  for (const row of tbody.rows) {
    row.classList.toggle('selected', row.dataset.symbol === symbol);
    row.querySelector('button').setAttribute('aria-pressed', String(row.dataset.symbol === symbol));
  }
  draw();
}

// ---------------------------------------------------------------- the chart

// At most one drawing per task, however many prices arrive together.
let drawing = false;
function draw() {
  if (drawing) return;
  drawing = true;
  setTimeout(() => {
    drawing = false;
    paint();
  });
}

function paint() {
  const entry = symbols.get(selected);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  if (!entry || entry.points.length < 2) return;

  const { quote, points } = entry;
  title.textContent = `${quote.symbol} · ${quote.name}`;
  const prices = points.map((p) => p.price);
  let low = Math.min(...prices, quote.open);
  let high = Math.max(...prices, quote.open);
  const pad = Math.max((high - low) * 0.1, high * 0.001);
  low -= pad;
  high += pad;
  figures.textContent = `${quote.price.toFixed(2)} now · ${quote.open.toFixed(2)} at open · last ${points.length} moves`;

  const left = 8;
  const right = width - 58;
  const top = 10;
  const bottom = height - 22;
  const x = (i) => left + ((right - left) * i) / (POINTS - 1);
  const y = (price) => bottom - ((bottom - top) * (price - low)) / (high - low);

  // Grid and price labels.
  g.font = '12px system-ui, sans-serif';
  g.fillStyle = '#5b6478';
  g.strokeStyle = '#e4e7ef';
  g.lineWidth = 1;
  g.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const price = low + ((high - low) * i) / 4;
    const yy = Math.round(y(price)) + 0.5;
    g.beginPath();
    g.moveTo(left, yy);
    g.lineTo(right, yy);
    g.stroke();
    g.fillText(price.toFixed(2), right + 6, yy);
  }
  // The opening price, dashed.
  g.setLineDash([4, 4]);
  g.strokeStyle = '#9aa3b5';
  g.beginPath();
  g.moveTo(left, y(quote.open));
  g.lineTo(right, y(quote.open));
  g.stroke();
  g.setLineDash([]);

  // The line, green above the open, red below; the area under it, faint.
  const offset = POINTS - points.length;
  const up = quote.price >= quote.open;
  const color = up ? '#137333' : '#b3261e';
  g.beginPath();
  points.forEach((p, i) => (i === 0 ? g.moveTo(x(offset + i), y(p.price)) : g.lineTo(x(offset + i), y(p.price))));
  g.strokeStyle = color;
  g.lineWidth = 2;
  g.lineJoin = 'round';
  g.stroke();
  g.lineTo(x(offset + points.length - 1), bottom);
  g.lineTo(x(offset), bottom);
  g.closePath();
  const fill = g.createLinearGradient(0, top, 0, bottom);
  fill.addColorStop(0, up ? '#13733330' : '#b3261e30');
  fill.addColorStop(1, '#ffffff00');
  g.fillStyle = fill;
  g.fill();

  // The last price, marked.
  const lastX = x(offset + points.length - 1);
  const lastY = y(quote.price);
  g.fillStyle = color;
  g.beginPath();
  g.arc(lastX, lastY, 3.5, 0, Math.PI * 2);
  g.fill();

  // Time axis: the first and the last point.
  g.fillStyle = '#5b6478';
  g.textBaseline = 'alphabetic';
  g.textAlign = 'left';
  // The first point's time, unless the line is still too short for two labels.
  if (right - x(offset) > 180) g.fillText(clock(points[0].time), x(offset), height - 5);
  g.textAlign = 'right';
  g.fillText(clock(points.at(-1).time), right, height - 5);
  g.textAlign = 'left';

  canvas.setAttribute('aria-label', `Price chart of ${quote.symbol}: ${quote.price.toFixed(2)}, ${percent(quote).toFixed(2)} % since the open`);
}

new ResizeObserver(draw).observe(canvas);

// ---------------------------------------------------------------- the data

function receive(quote) {
  let entry = symbols.get(quote.symbol);
  if (!entry) {
    entry = { quote, points: [], row: rowFor(quote) };
    symbols.set(quote.symbol, entry);
    if (quote.symbol === selected) select(selected);
  }
  const last = entry.points.at(-1);
  if (last && last.time >= quote.time) return; // already have it (the recent prices and a live one crossed)
  const previous = entry.quote.price;
  entry.quote = quote;
  entry.points.push({ price: quote.price, time: quote.time });
  if (entry.points.length > POINTS) entry.points.shift();
  showRow(entry, previous);
  updates++;
  if (quote.symbol === selected) draw();
}

async function start() {
  // Live first, then the recent past: live prices that arrive meanwhile are kept and merged by time.
  const held = [];
  let ready = false;
  await client.subscribe('/demo/ticker/*', (quote) => (ready ? receive(quote) : held.push(quote)));
  const recent = await client.request('/service/ticker/recent', {});
  for (const s of recent.symbols) {
    const entry = { quote: s, points: s.points.slice(-POINTS), row: rowFor(s) };
    symbols.set(s.symbol, entry);
    showRow(entry);
  }
  ready = true;
  for (const quote of held) receive(quote);
  select(selected);
}

setInterval(() => {
  rateLine.textContent = String(updates);
  updates = 0;
}, 1000);

start().catch((error) => {
  figures.textContent = reason(error);
});
window.demo = { client };
