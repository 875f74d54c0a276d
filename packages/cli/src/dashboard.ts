/**
 * The live dashboard at `/dashboard` served by `perihelion serve`: charts of what the server is
 * doing (sessions by transport, publishes in and deliveries out per second, queue drops, history,
 * delivery latency, the busiest channels) and tables of its sessions and channels.
 *
 * The page (packages/cli/public/dashboard/) is a Bayeux client of this very server, through
 * `<mount>/client.js`:
 *
 * - it asks `/service/dashboard/access` whether it may see the data (`{keySet, access}`);
 * - it subscribes to `/perihelion/stats/*`, and the server sends it a snapshot about once a second
 *   on `/perihelion/stats/snapshot` (delivered to each watching session, not published: nothing
 *   goes to history, no other subscriber sees it; and as a pattern has no presence, nobody is told
 *   who watches);
 * - it asks `/service/dashboard/sessions` and `/service/dashboard/channels` for the tables.
 *
 * Access: with an API key (`PERIHELION_API_KEY`), the subscribe and the requests must carry it as
 * `ext.apiKey` (compared in constant time, then removed from the message); without one, only
 * clients connecting from this machine (loopback, with no proxy's forwarding header) get data.
 * Anything else is refused with a 403 that says why. The page and its files are served to anyone.
 *
 * Nothing is computed while nobody watches: the per-second timer and the 'publish' listener that
 * counts publishes per channel exist only while a session is subscribed to the stats channel.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Message } from '@perihelion/protocol';
import { ServiceRefusal, type ChannelRule, type Perihelion, type ServerStats, type Session } from '@perihelion/server';

/**
 * The page subscribes to this pattern and the snapshots come on STATS_CHANNEL: a pattern has no
 * presence, so who watches the dashboard is announced to nobody.
 */
export const STATS_PATTERN = '/perihelion/stats/*';
export const STATS_CHANNEL = '/perihelion/stats/snapshot';
const STATS_PREFIX = '/perihelion/stats';
export const DASHBOARD_SERVICES = '/service/dashboard/';
const ACCESS = `${DASHBOARD_SERVICES}access`;
const SESSIONS = `${DASHBOARD_SERVICES}sessions`;
const CHANNELS = `${DASHBOARD_SERVICES}channels`;

/** The dashboard's requests reach its listeners; its extension decides who gets an answer. */
export const DASHBOARD_RULES: ChannelRule[] = [{ channel: `${DASHBOARD_SERVICES}*`, publish: 'anyone' }];

// ------------------------------------------------------------------------------------ access

/** `key` and `local` see the data; the others are refused, each with its own explanation. */
export type Access = 'key' | 'local' | 'need-key' | 'wrong-key' | 'not-local';

export function granted(access: Access | undefined): boolean {
  return access === 'key' || access === 'local';
}

/** What the client is told when refused. */
export const REFUSALS: Record<Exclude<Access, 'key' | 'local'>, string> = {
  'need-key': 'dashboard: an API key is required',
  'wrong-key': 'dashboard: wrong API key',
  'not-local': 'dashboard: no API key is set, so the dashboard is open to this machine only; set PERIHELION_API_KEY to open it to others',
};

/** 127.0.0.0/8, ::1, and IPv4 loopback written as an IPv6 address. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return address === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

/** A request that came through a proxy: its remote address says nothing about the client. */
function forwarded(headers: IncomingHttpHeaders | undefined): boolean {
  return headers !== undefined && (headers['x-forwarded-for'] !== undefined || headers.forwarded !== undefined || headers['x-real-ip'] !== undefined);
}

/** Compares in constant time, whatever the lengths (both sides are hashed first). */
export function sameKey(expected: string, presented: string): boolean {
  const digest = (text: string): Buffer => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(expected), digest(presented));
}

/** The gate: who may see the dashboard's data. */
export function decideAccess(request: { apiKey: string | undefined; presented: unknown; remoteAddress: string | undefined; headers?: IncomingHttpHeaders | undefined }): Access {
  const { apiKey, presented } = request;
  if (apiKey !== undefined) {
    if (typeof presented !== 'string' || presented === '') return 'need-key';
    return sameKey(apiKey, presented) ? 'key' : 'wrong-key';
  }
  return isLoopback(request.remoteAddress) && !forwarded(request.headers) ? 'local' : 'not-local';
}

// ------------------------------------------------------------------------------ statistics

/** Per-second rates of ever-growing counters, from the difference between two samples. */
export class RateMeter<K extends string> {
  private last: { at: number; values: Record<K, number> } | null = null;

  /** Rates since the previous sample (zeros the first time); a counter that went back counts 0. */
  sample(values: Record<K, number>, now: number): Record<K, number> {
    const rates = {} as Record<K, number>;
    const last = this.last;
    const seconds = last ? (now - last.at) / 1000 : 0;
    for (const key of Object.keys(values) as K[]) {
      const delta = last ? values[key] - (last.values[key] ?? 0) : 0;
      rates[key] = seconds > 0 && delta > 0 ? delta / seconds : 0;
    }
    this.last = { at: now, values: { ...values } };
    return rates;
  }
}

export interface ChannelRate {
  channel: string;
  /** Publishes per second, smoothed. */
  rate: number;
}

/**
 * Publishes per second per channel, smoothed over a few seconds (an exponentially weighted
 * average with the given half-life), in maps that never hold more than `maxChannels` channels:
 * publishes on channels past that within one tick are counted as `other`, and at each tick the
 * slowest channels beyond the bound, and those that fell silent, are forgotten.
 */
export class ChannelRates {
  private readonly counts = new Map<string, number>();
  private overflow = 0;
  private readonly rates = new Map<string, number>();
  private otherRate = 0;
  readonly maxChannels: number;
  readonly halfLifeMs: number;

  constructor({ maxChannels = 500, halfLifeMs = 5000 }: { maxChannels?: number; halfLifeMs?: number } = {}) {
    this.maxChannels = maxChannels;
    this.halfLifeMs = halfLifeMs;
  }

  record(channel: string): void {
    const count = this.counts.get(channel);
    if (count !== undefined) this.counts.set(channel, count + 1);
    else if (this.counts.size < this.maxChannels) this.counts.set(channel, 1);
    else this.overflow++;
  }

  /** Folds the publishes counted since the last tick into the rates; `elapsedMs` is the time since. */
  tick(elapsedMs: number): void {
    if (elapsedMs <= 0) return;
    const keep = 0.5 ** (elapsedMs / this.halfLifeMs);
    const seconds = elapsedMs / 1000;
    for (const [channel, rate] of this.rates) {
      if (!this.counts.has(channel)) {
        const decayed = rate * keep;
        if (decayed < 0.01) this.rates.delete(channel);
        else this.rates.set(channel, decayed);
      }
    }
    for (const [channel, count] of this.counts) {
      this.rates.set(channel, (this.rates.get(channel) ?? 0) * keep + (count / seconds) * (1 - keep));
    }
    this.otherRate = this.otherRate * keep + (this.overflow / seconds) * (1 - keep);
    if (this.otherRate < 0.01) this.otherRate = 0;
    this.counts.clear();
    this.overflow = 0;
    if (this.rates.size > this.maxChannels) {
      const slowest = [...this.rates].sort((a, b) => a[1] - b[1]).slice(0, this.rates.size - this.maxChannels);
      for (const [channel] of slowest) this.rates.delete(channel);
    }
  }

  /** The `n` busiest channels, busiest first. */
  top(n: number): ChannelRate[] {
    return [...this.rates]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, n)
      .map(([channel, rate]) => ({ channel, rate }));
  }

  /** Publishes per second on channels past the bound. */
  get other(): number {
    return this.otherRate;
  }

  /** Channels tracked (at most `maxChannels`). */
  get size(): number {
    return this.rates.size;
  }

  clear(): void {
    this.counts.clear();
    this.rates.clear();
    this.overflow = 0;
    this.otherRate = 0;
  }
}

/** What the dashboard page receives on the stats channel, about once a second. */
export interface StatsSnapshot {
  t: number;
  sessions: number;
  sessionsByTransport: Record<string, number>;
  /** Per second: publishes in, deliveries out (one per recipient), client messages, queue drops. */
  rates: { published: number; deliveries: number; messagesIn: number; queueDrops: number };
  totals: { published: number; deliveries: number; messagesIn: number; queueDrops: number; slowConsumers: number };
  topChannels: ChannelRate[];
  /** Publishes per second on channels not tracked (beyond the bound). */
  otherChannels: number;
  history: { channels: number; messages: number };
  /** Delivery latency over the last 10 s, ms. */
  latency: { count: number; p50: number | null; p95: number | null; p99: number | null };
}

const COUNTERS = ['published', 'deliveries', 'messagesIn', 'queueDrops'] as const;
type Counter = (typeof COUNTERS)[number];

/** Builds snapshots from the server's counters and the per-channel rates. */
export class Sampler {
  readonly channels: ChannelRates;
  private readonly meter = new RateMeter<Counter>();
  private lastTick: number | null = null;

  constructor(options: { maxChannels?: number; halfLifeMs?: number } = {}) {
    this.channels = new ChannelRates(options);
  }

  snapshot(stats: ServerStats, extra: Pick<StatsSnapshot, 'history' | 'latency'>, now: number, top = 8): StatsSnapshot {
    if (this.lastTick !== null) this.channels.tick(now - this.lastTick);
    this.lastTick = now;
    const totals = { published: stats.published, deliveries: stats.deliveries, messagesIn: stats.messagesIn, queueDrops: stats.queueDrops };
    const rates = this.meter.sample(totals, now);
    return {
      t: now,
      sessions: stats.sessions,
      sessionsByTransport: { ...stats.sessionsByTransport },
      rates,
      totals: { ...totals, slowConsumers: stats.slowConsumers },
      topChannels: this.channels.top(top),
      otherChannels: this.channels.other,
      ...extra,
    };
  }
}

// --------------------------------------------------------------------------- the server side

const MAX_ROWS = 200;

export interface DashboardOptions {
  /** How often a snapshot is sent, ms. Default 1000. */
  interval?: number;
  /** The key that opens the data; default: the server's `apiKey` option. */
  apiKey?: string;
}

export interface Dashboard {
  /** Answers `/dashboard` and its files; false for any other path (for the next handler). */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  /** Sessions watching the stats channel on this node. */
  readonly watchers: number;
  /** One line for the start-up summary. */
  readonly summary: string;
  /** Stops the timer and forgets the watchers (the server's close ends their sessions anyway). */
  close(): void;
}

/**
 * Installs the dashboard's gate (an extension), its services and its stats publisher on
 * `server`, and returns the handler of its page.
 */
export function installDashboard(server: Perihelion, options: DashboardOptions = {}): Dashboard {
  const interval = options.interval ?? 1000;
  const apiKey = options.apiKey ?? server.options.apiKey;
  /** The latest decision for each session that asked (a WeakMap: ended sessions are no concern). */
  const decisions = new WeakMap<Session, Access>();
  const watchers = new Map<string, Session>();
  let sampler = new Sampler();
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  const countPublish = (message: Message): void => sampler.channels.record(message.channel);

  // The gate. Only three kinds of message concern it; everything else passes untouched.
  server.addExtension({
    incoming(message, { session, transport }) {
      const { subscription } = message;
      const stats = (name: unknown): boolean => typeof name === 'string' && name.startsWith(STATS_PREFIX);
      const ours =
        (message.channel === '/meta/subscribe' && (stats(subscription) || (Array.isArray(subscription) && subscription.some(stats)))) ||
        message.channel.startsWith(DASHBOARD_SERVICES);
      if (!ours || !session) return message;
      const { apiKey: presented, ...ext } = message.ext ?? {};
      const access = decideAccess({ apiKey, presented, remoteAddress: session.remoteAddress ?? transport?.request.remoteAddress, headers: transport?.request.headers });
      decisions.set(session, access);
      // The key goes no further (listeners, call-outs, logs).
      const passed: Message = { ...message };
      if (Object.keys(ext).length > 0) passed.ext = ext;
      else delete passed.ext;
      if (granted(access) || message.channel === ACCESS) return passed;
      return { ...passed, error: `403::${REFUSALS[access as keyof typeof REFUSALS]}` };
    },
  });

  server.subscribe(ACCESS, (_message, session) => ({
    keySet: apiKey !== undefined,
    access: (session && decisions.get(session)) ?? (apiKey !== undefined ? 'need-key' : 'not-local'),
  }));
  server.subscribe(SESSIONS, async (message, session) => {
    if (!session || !granted(decisions.get(session))) return refusal(session ? decisions.get(session) : undefined);
    const filter = searchOf(message.data);
    const rows = (await server.sessions()).map((s) => ({ clientId: s.clientId, user: s.user, transport: s.connectionType, subscriptions: s.subscriptions }));
    const matched = rows.filter((row) => !filter || [row.clientId, row.user ?? '', row.transport ?? '', ...row.subscriptions].some((text) => text.toLowerCase().includes(filter)));
    matched.sort((a, b) => (a.user ?? '\uffff').localeCompare(b.user ?? '\uffff') || a.clientId.localeCompare(b.clientId));
    return { total: rows.length, matched: matched.length, rows: matched.slice(0, MAX_ROWS), you: session.id };
  });
  server.subscribe(CHANNELS, async (message, session) => {
    if (!session || !granted(decisions.get(session))) return refusal(session ? decisions.get(session) : undefined);
    const filter = searchOf(message.data);
    const rows = [...(await server.engine.channels())].map(([channel, subscribers]) => ({ channel, subscribers }));
    const matched = rows.filter((row) => !filter || row.channel.toLowerCase().includes(filter));
    matched.sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel));
    return { total: rows.length, matched: matched.length, rows: matched.slice(0, MAX_ROWS) };
  });

  // Watchers: sessions the gate let subscribe to the stats channel.
  const watch = (session: Session, channel: string): void => {
    if (channel !== STATS_PATTERN || closed || !granted(decisions.get(session))) return;
    watchers.set(session.id, session);
    if (!timer) start();
  };
  const unwatch = (session: Session, channel?: string): void => {
    if (channel !== undefined && channel !== STATS_PATTERN) return;
    if (watchers.delete(session.id) && watchers.size === 0) stop();
  };
  server.on('subscribe', watch);
  server.on('unsubscribe', unwatch);
  server.on('disconnect', (session) => unwatch(session));

  let sending = false;
  const tick = async (): Promise<void> => {
    // A slow engine (Redis) never makes ticks pile up.
    if (sending || server.isDraining) return;
    sending = true;
    try {
      const history = await server.engine.historyStats();
      const latency = server.latency(10_000);
      const snapshot = sampler.snapshot(server.stats(), { history, latency: { count: latency.count, p50: latency.p50, p95: latency.p95, p99: latency.p99 } }, Date.now());
      await Promise.all(
        [...watchers.keys()].map((clientId) =>
          server.deliver(clientId, STATS_CHANNEL, snapshot).then(
            (delivered) => {
              if (!delivered) watchers.delete(clientId);
            },
            () => {},
          ),
        ),
      );
      if (watchers.size === 0) stop();
    } catch {
      // The engine is away: the next tick tries again.
    } finally {
      sending = false;
    }
  };
  let stopCounting: (() => void) | null = null;
  function start(): void {
    sampler = new Sampler(); // rates start afresh, not averaged over the idle time
    stopCounting = server.on('publish', countPublish);
    timer = setInterval(() => void tick(), interval);
    timer.unref();
    void tick();
  }
  function stop(): void {
    if (timer) clearInterval(timer);
    timer = null;
    stopCounting?.();
    stopCounting = null;
  }

  const where = apiKey !== undefined ? 'its data asks for PERIHELION_API_KEY' : 'its data open to this machine only, as no API key is set';
  return {
    handle: (req, res) => serveFile(req, res, server.options.path),
    get watchers() {
      return watchers.size;
    },
    summary: where,
    close() {
      closed = true;
      watchers.clear();
      stop();
    },
  };
}

function refusal(access: Access | undefined): ServiceRefusal {
  // The extension refuses first; this is for a request that reached the listener some other way.
  return new ServiceRefusal(`403::${REFUSALS[(access && !granted(access) ? access : 'need-key') as keyof typeof REFUSALS]}`);
}

function searchOf(data: unknown): string {
  const search = (data as { search?: unknown } | null)?.search;
  return typeof search === 'string' ? search.trim().toLowerCase().slice(0, 200) : '';
}

// ------------------------------------------------------------------------------- the page

const here = dirname(fileURLToPath(import.meta.url));
const publicDir = join(here, '..', '..', 'public', 'dashboard');
const uplotDir = join(dirname(createRequire(import.meta.url).resolve('uplot')), '..', 'dist');

/** Only these files are served; nothing derived from the URL reaches the file system. */
const FILES: Record<string, { file: string; type: string }> = {
  '/dashboard': { file: join(publicDir, 'index.html'), type: 'text/html; charset=utf-8' },
  '/dashboard/': { file: join(publicDir, 'index.html'), type: 'text/html; charset=utf-8' },
  '/dashboard/dashboard.js': { file: join(publicDir, 'dashboard.js'), type: 'text/javascript; charset=utf-8' },
  '/dashboard/dashboard.css': { file: join(publicDir, 'dashboard.css'), type: 'text/css; charset=utf-8' },
  '/dashboard/favicon.svg': { file: join(publicDir, 'favicon.svg'), type: 'image/svg+xml' },
  '/dashboard/uPlot.iife.min.js': { file: join(uplotDir, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  '/dashboard/uPlot.min.css': { file: join(uplotDir, 'uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

/** The page's own rules: its scripts and styles from here, its Bayeux client to this origin, no framing. */
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/** The page is told the Bayeux mount path (the operator's setting, never the URL's). */
function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function serveFile(req: IncomingMessage, res: ServerResponse, mount: string): boolean {
  const path = (req.url ?? '/').split('?')[0]!;
  if (!Object.hasOwn(FILES, path)) return false;
  const entry = FILES[path]!;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('Method not allowed\n');
    return true;
  }
  const html = entry.type.startsWith('text/html');
  readFile(entry.file).then(
    (file) => {
      const body = html ? Buffer.from(file.toString('utf8').replaceAll('%MOUNT%', escapeHtml(mount))) : file;
      res
        .writeHead(200, {
          'Content-Type': entry.type,
          'Content-Length': body.length,
          'Cache-Control': 'no-cache',
          'X-Content-Type-Options': 'nosniff',
          ...(html ? { 'Content-Security-Policy': CSP, 'X-Frame-Options': 'DENY', 'Referrer-Policy': 'no-referrer' } : {}),
        })
        .end(req.method === 'HEAD' ? undefined : body);
    },
    () => res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Missing dashboard file\n'),
  );
  return true;
}
