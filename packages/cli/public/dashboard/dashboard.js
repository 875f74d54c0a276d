/*
 * The Perihelion dashboard: a Bayeux client of the server it shows. It asks
 * /service/dashboard/access whether it may see the data, subscribes to /perihelion/stats/* (a
 * snapshot about once a second) and asks /service/dashboard/sessions and /channels for the
 * tables. With an API key on the server, the key (kept in this tab's sessionStorage) travels as
 * ext.apiKey on those messages only. Charts: uPlot, served by the dashboard route.
 */
(() => {
  'use strict';

  const STATS = '/perihelion/stats/*'; // snapshots come on /perihelion/stats/snapshot
  const SERVICES = '/service/dashboard/';
  const KEY_STORE = 'perihelion.dashboard.key';
  const WINDOW = 300; // points kept: five minutes at one a second
  const TABLE_REFRESH = 3000;

  const $ = (id) => document.getElementById(id);
  const mount = document.querySelector('meta[name="perihelion-mount"]').content;
  const main = $('main');

  // ------------------------------------------------------------------ formatting

  const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
  function rate(value) {
    if (value === null || value === undefined) return '—';
    if (value === 0) return '0';
    if (value < 10) return value.toFixed(1);
    return value < 100000 ? whole.format(value) : compact.format(value);
  }
  function count(value) {
    return value < 100000 ? whole.format(value) : compact.format(value);
  }
  function ms(value) {
    if (value === null || value === undefined) return '—';
    return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : whole.format(value);
  }
  function text(el, value) {
    if (el.textContent !== value) el.textContent = value;
  }
  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) Object.assign(node, props);
    for (const child of children || []) node.append(child);
    return node;
  }

  // ------------------------------------------------------------------ charts

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const PALETTE = ['--c1', '--c2', '--c3', '--c4', '--c5', '--c6', '--c7'].map(color);
  const axis = () => ({ stroke: color('--muted'), grid: { stroke: color('--line'), width: 1 }, ticks: { stroke: color('--line'), width: 1 }, font: '11px system-ui, sans-serif' });

  const series = { t: [], in: [], out: [], p50: [], p95: [], p99: [], drops: [], history: [], transports: new Map() };
  const charts = {};

  function makeChart(id, lines, options = {}) {
    const container = $(id);
    const width = Math.max(container.clientWidth, 200);
    const height = container.clientWidth < 480 ? 170 : 210;
    const opts = {
      width,
      height,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, options.minMax ?? 1) * 1.1] }, ...(options.scales || {}) },
      axes: [axis(), { ...axis(), size: 48, values: (u, splits) => splits.map((v) => (v >= 1000 ? compact.format(v) : String(+v.toFixed(2)))) }, ...(options.axes || [])],
      series: [{}, ...lines.map((line, i) => ({ label: line.label, stroke: line.color ?? PALETTE[i % PALETTE.length], width: 2, scale: line.scale ?? 'y', points: { show: false }, value: (u, v, si, idx) => {
        // Not hovering: the latest value.
        const shown = idx === null || idx === undefined ? u.data[si][u.data[si].length - 1] : v;
        return shown === null || shown === undefined ? '—' : line.format ? line.format(shown) : rate(shown);
      } }))],
      legend: { live: true },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
    };
    container.textContent = '';
    const chart = new uPlot(opts, [series.t, ...lines.map((line) => line.data())], container);
    chart.lines = lines;
    return chart;
  }

  function transportLines() {
    return [...series.transports.keys()].sort().map((name, i) => ({ label: name, color: PALETTE[i % PALETTE.length], format: count, data: () => series.transports.get(name) }));
  }

  function setUpCharts() {
    charts.rates = makeChart('chart-rates', [
      { label: 'publishes in', data: () => series.in },
      { label: 'deliveries out', data: () => series.out },
    ]);
    charts.sessions = makeChart('chart-sessions', transportLines(), { minMax: 1 });
    charts.latency = makeChart('chart-latency', [
      { label: 'p50', data: () => series.p50, format: ms },
      { label: 'p95', data: () => series.p95, format: ms },
      { label: 'p99', data: () => series.p99, format: ms },
    ], { minMax: 1 });
    charts.history = makeChart('chart-history', [
      { label: 'drops/s', color: color('--c4'), data: () => series.drops },
      { label: 'history messages', color: color('--c3'), scale: 'h', data: () => series.history, format: count },
    ], {
      scales: { h: { range: (u, min, max) => [0, Math.max(max, 10) * 1.1] } },
      axes: [{ ...axis(), scale: 'h', side: 1, size: 52, grid: { show: false }, values: (u, splits) => splits.map((v) => compact.format(v)) }],
    });
  }

  function redraw() {
    for (const chart of Object.values(charts)) chart.setData([series.t, ...chart.lines.map((line) => line.data())]);
  }

  let lastWidths = '';
  function resize() {
    const widths = Object.keys(charts).map((name) => $(`chart-${name}`).clientWidth).join(',');
    if (widths === lastWidths) return;
    lastWidths = widths;
    for (const [name, chart] of Object.entries(charts)) {
      const width = $(`chart-${name}`).clientWidth;
      chart.setSize({ width: Math.max(width, 200), height: width < 480 ? 170 : 210 });
    }
  }
  let resizeQueued = false;
  window.addEventListener('resize', () => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      resize();
    });
  });

  // ------------------------------------------------------------------ snapshots

  function push(list, value) {
    list.push(value);
    if (list.length > WINDOW) list.shift();
  }

  function onSnapshot(s) {
    const known = series.transports.size;
    for (const name of Object.keys(s.sessionsByTransport)) {
      if (!series.transports.has(name)) series.transports.set(name, series.t.map(() => 0));
    }
    push(series.t, s.t / 1000);
    push(series.in, s.rates.published);
    push(series.out, s.rates.deliveries);
    push(series.p50, s.latency.p50);
    push(series.p95, s.latency.p95);
    push(series.p99, s.latency.p99);
    push(series.drops, s.rates.queueDrops);
    push(series.history, s.history.messages);
    for (const [name, list] of series.transports) push(list, s.sessionsByTransport[name] ?? 0);
    if (series.transports.size !== known) {
      charts.sessions.destroy();
      charts.sessions = makeChart('chart-sessions', transportLines(), { minMax: 1 });
    }
    redraw();

    text($('kpi-sessions'), count(s.sessions));
    const transports = Object.entries(s.sessionsByTransport).sort((a, b) => b[1] - a[1]);
    text($('kpi-transports'), transports.length ? transports.map(([name, n]) => `${n} ${name}`).join(' · ') : 'none');
    text($('kpi-in'), rate(s.rates.published));
    text($('kpi-in-total'), `${count(s.totals.published)} published in all`);
    text($('kpi-out'), rate(s.rates.deliveries));
    text($('kpi-out-total'), `${count(s.totals.deliveries)} delivered in all`);
    text($('kpi-p99'), ms(s.latency.p99));
    text($('kpi-latency'), s.latency.count ? `p50 ${ms(s.latency.p50)} · p95 ${ms(s.latency.p95)} (10 s)` : 'no deliveries in the last 10 s');
    text($('kpi-drops'), count(s.totals.queueDrops));
    text($('kpi-drops-rate'), `${rate(s.rates.queueDrops)}/s now${s.totals.slowConsumers ? ` · ${count(s.totals.slowConsumers)} slow consumers ended` : ''}`);
    text($('kpi-history'), count(s.history.messages));
    text($('kpi-history-channels'), `messages kept on ${count(s.history.channels)} channel${s.history.channels === 1 ? '' : 's'}`);
    renderTop(s.topChannels, s.otherChannels);
  }

  function renderTop(top, other) {
    const list = $('top-channels');
    const items = top.filter((entry) => entry.rate >= 0.05);
    if (other >= 0.05) items.push({ channel: '(other channels)', rate: other });
    if (items.length === 0) {
      list.replaceChildren(el('li', { className: 'empty', textContent: 'No publishes in the last few seconds.' }));
      return;
    }
    const max = Math.max(...items.map((entry) => entry.rate));
    list.replaceChildren(...items.map((entry) => {
      const bar = el('span');
      bar.style.width = `${Math.max(2, (entry.rate / max) * 100).toFixed(1)}%`;
      return el('li', {}, [
        el('span', { className: 'name', textContent: entry.channel, title: entry.channel }),
        el('span', { className: 'rate', textContent: `${rate(entry.rate)}/s` }),
        el('span', { className: 'bar' }, [bar]),
      ]);
    }));
  }

  // ------------------------------------------------------------------ tables

  let client = null;
  let tableTimer = null;
  let lastTables = { sessions: null, channels: null };
  const search = $('search');

  function matches(query, values) {
    return !query || values.some((value) => String(value ?? '').toLowerCase().includes(query));
  }

  function renderTables() {
    const query = search.value.trim().toLowerCase();
    const sessions = lastTables.sessions;
    if (sessions) {
      const rows = sessions.rows.filter((row) => matches(query, [row.clientId, row.user, row.transport, ...row.subscriptions]));
      const body = $('sessions-table').tBodies[0];
      body.replaceChildren(...(rows.length ? rows.map((row) => el('tr', {}, [
        el('td', { className: 'mono' }, [row.clientId, ...(row.clientId === sessions.you ? [el('span', { className: 'you', textContent: '(this page)' })] : [])]),
        el('td', { textContent: row.user ?? 'anonymous' }),
        el('td', { textContent: row.transport ?? '—' }),
        el('td', {}, row.subscriptions.length ? row.subscriptions.map((sub) => el('span', { className: 'tag', textContent: sub })) : ['—']),
      ])) : [el('tr', {}, [el('td', { className: 'empty', colSpan: 4, textContent: query ? 'No session matches.' : 'No sessions.' })])]));
      text($('sessions-caption'), query ? `${rows.length} of ${sessions.total} match` : `${sessions.total}${sessions.total > sessions.rows.length ? `, first ${sessions.rows.length} shown` : ''}`);
    }
    const channels = lastTables.channels;
    if (channels) {
      const rows = channels.rows.filter((row) => matches(query, [row.channel]));
      const body = $('channels-table').tBodies[0];
      body.replaceChildren(...(rows.length ? rows.map((row) => el('tr', {}, [
        el('td', { className: 'mono', textContent: row.channel }),
        el('td', { className: 'num', textContent: count(row.subscribers) }),
      ])) : [el('tr', {}, [el('td', { className: 'empty', colSpan: 2, textContent: query ? 'No channel matches.' : 'No subscriptions.' })])]));
      text($('channels-caption'), query ? `${rows.length} of ${channels.total} match` : `${channels.total}${channels.total > channels.rows.length ? `, first ${channels.rows.length} shown` : ''}`);
    }
  }

  async function refreshTables() {
    if (!client || document.hidden) return;
    const query = { search: search.value.trim() };
    const current = client;
    try {
      const [sessions, channels] = await Promise.all([
        current.request(`${SERVICES}sessions`, query),
        current.request(`${SERVICES}channels`, query),
      ]);
      if (current !== client) return;
      lastTables = { sessions, channels };
      renderTables();
    } catch {
      // Offline or refused: the status line says so; the next refresh tries again.
    }
  }

  function startTables() {
    stopTables();
    void refreshTables();
    tableTimer = setInterval(() => void refreshTables(), TABLE_REFRESH);
  }
  function stopTables() {
    if (tableTimer) clearInterval(tableTimer);
    tableTimer = null;
  }

  let searchTimer = null;
  search.addEventListener('input', () => {
    renderTables(); // at once, on what is shown
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => void refreshTables(), 250); // then from the server, past the first rows
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) void refreshTables();
  });

  // ------------------------------------------------------------------ connection and access

  function status(state, message) {
    const line = $('status');
    line.className = `status ${state}`;
    text($('status-text'), message);
  }

  function showAccess(access, keySet) {
    $('access-local').hidden = access !== 'local';
    $('access-key').hidden = access !== 'key';
    $('access-remote').hidden = access !== 'not-local';
    const form = $('key-form');
    form.hidden = !(access === 'need-key' || access === 'wrong-key');
    $('key-error').hidden = access !== 'wrong-key';
    $('key-input').setAttribute('aria-invalid', access === 'wrong-key' ? 'true' : 'false');
    const open = access === 'local' || access === 'key';
    main.classList.toggle('locked', !open);
    main.inert = !open;
    document.body.dataset.access = access;
    document.body.dataset.keySet = String(keySet);
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || '';
    } catch {
      return '';
    }
  }
  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      // Storage off: the key lasts as long as the page.
    }
  }

  let generation = 0;
  async function connect(key) {
    const mine = ++generation;
    stopTables();
    if (client) {
      const old = client;
      client = null;
      await old.disconnect().catch(() => {});
    }
    // Its own connection (not shared with other tabs), so that its key is its own.
    const next = new Perihelion.Client(mount, { shared: false });
    next.addExtension({
      outgoing(message) {
        const gated = (message.channel === '/meta/subscribe' && message.subscription === STATS) || message.channel.startsWith(SERVICES);
        return key && gated ? { ...message, ext: { ...(message.ext || {}), apiKey: key } } : message;
      },
    });
    next.on('state', ({ state, transport }) => {
      if (next !== client) return;
      if (state === 'connected') status('connected', `live · ${transport}`);
      else if (state === 'connecting') status('connecting', 'reconnecting…');
      else status('offline', 'disconnected');
    });
    client = next;
    status('connecting', 'connecting…');
    let answer;
    try {
      answer = await next.request(`${SERVICES}access`, {});
    } catch (error) {
      if (mine !== generation) return;
      status('offline', `cannot reach the server (${error.code || error.message}); retrying`);
      setTimeout(() => mine === generation && void connect(key), 3000);
      return;
    }
    if (mine !== generation) return;
    showAccess(answer.access, answer.keySet);
    if (answer.access === 'wrong-key') storeKey('');
    if (answer.access !== 'local' && answer.access !== 'key') {
      status('refused', answer.access === 'not-local' ? 'not on this machine' : 'API key needed');
      if (answer.access === 'wrong-key' || answer.access === 'need-key') $('key-input').focus();
      return;
    }
    if (key) storeKey(key);
    try {
      await next.subscribe(STATS, onSnapshot);
    } catch (error) {
      if (mine === generation) status('refused', `refused: ${error.bayeux || error.message}`);
      return;
    }
    if (mine !== generation) return;
    status('connected', `live · ${next.transport}`);
    startTables();
  }

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('key-input').value.trim();
    if (key) void connect(key);
  });
  $('forget-key').addEventListener('click', () => {
    storeKey('');
    $('key-input').value = '';
    void connect('');
  });
  window.addEventListener('pagehide', () => {
    stopTables();
    client?.disconnect().catch(() => {});
  });

  setUpCharts();
  void connect(storedKey());
})();
