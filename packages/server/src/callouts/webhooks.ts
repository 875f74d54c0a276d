/**
 * Webhooks: the server tells the application what happened (the `webhooks` option), by POSTing
 * JSON `{event, clientId, user, channel?, reason?, at}` for handshake, subscribe, unsubscribe and
 * disconnect events.
 *
 * Fire and forget: nothing waits for the answer, and a slow or dead endpoint never slows the
 * server. Per webhook at most 16 requests are in flight and at most 1000 events wait; past that
 * the oldest waiting event is dropped and counted (`dropped()`). Events of one session are sent
 * one at a time, in the order they happened. Failures are not retried; they are reported through
 * the server's 'error' event, at most once a second per webhook.
 */
import type { DisconnectReason } from '../core/events.js';
import type { Session } from '../core/session.js';
import type { Perihelion } from '../perihelion.js';
import { checkHeaders, checkKeys, checkTimeout, checkUrl } from './allow.js';
import { PerihelionError } from '../errors.js';
import { ReportThrottle } from '../report-throttle.js';

export type WebhookEvent = 'handshake' | 'disconnect' | 'subscribe' | 'unsubscribe';

export const WEBHOOK_EVENTS: readonly WebhookEvent[] = ['handshake', 'disconnect', 'subscribe', 'unsubscribe'];

export interface Webhook {
  /** Where events are POSTed (http:// or https://). */
  url: string;
  /** Events sent to this webhook. Default: all four. */
  events?: WebhookEvent[];
  /** Extra request headers, e.g. a shared secret the application checks. */
  headers?: Record<string, string>;
  /** Longest wait for one request, in ms (1 to 60000). Default: 5000. */
  timeout?: number;
}

/** The JSON body the application receives. */
export interface WebhookPayload {
  event: WebhookEvent;
  clientId: string;
  /** The authenticated user's id; null for an anonymous session. */
  user: string | null;
  /** The channel or pattern (subscribe, unsubscribe). */
  channel?: string;
  /** Why the session ended (disconnect): client, expired, server, shutdown, token-expired, abuse. */
  reason?: DisconnectReason;
  /** When it happened, ISO 8601. */
  at: string;
}

export interface WebhookStats {
  url: string;
  /** Events waiting to be sent. */
  queued: number;
  inFlight: number;
  /** Requests answered with a 2xx status. */
  sent: number;
  /** Requests that failed (no answer in time, connection error, non-2xx status). */
  failed: number;
  /** Events dropped because the backlog was full. */
  dropped: number;
}

/** A webhook request that failed, or events dropped (reported through the server's 'error' event). */
export class WebhookError extends PerihelionError {
  constructor(message: string, readonly url: string, options?: { cause?: unknown }) {
    super('ERR_WEBHOOK', message, options);
    this.name = 'WebhookError';
  }
}

export const MAX_IN_FLIGHT = 16;
export const MAX_BACKLOG = 1000;
const DEFAULT_TIMEOUT = 5000;
const REPORT_EVERY_MS = 1000;
const KEYS = ['url', 'events', 'headers', 'timeout'];

/** Validates the `webhooks` option; throws PerihelionError ERR_INVALID_OPTION naming the key. */
export function validateWebhooks(value: unknown): void {
  if (value === undefined) return;
  if (!Array.isArray(value)) invalid('option "webhooks" must be a list like [{ url, events?, headers?, timeout? }]');
  value.forEach((hook: unknown, i) => {
    const key = `webhooks[${i}]`;
    checkKeys(hook, KEYS, key);
    checkUrl(hook.url, `${key}.url`);
    const { events } = hook;
    if (events !== undefined) {
      if (!Array.isArray(events) || events.length === 0) invalid(`option "${key}.events" must be a non-empty list of: ${WEBHOOK_EVENTS.join(', ')}`);
      for (const event of events) {
        if (!(WEBHOOK_EVENTS as readonly unknown[]).includes(event)) {
          invalid(`option "${key}.events": unknown event ${JSON.stringify(event)}; the events are: ${WEBHOOK_EVENTS.join(', ')}`);
        }
      }
    }
    checkHeaders(hook.headers, `${key}.headers`);
    checkTimeout(hook.timeout, `${key}.timeout`);
  });
}

function invalid(message: string): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message);
}

interface Pending {
  clientId: string;
  body: string;
}

/** One webhook's bounded backlog and its requests in flight. */
class Delivery {
  readonly events: ReadonlySet<WebhookEvent>;
  private readonly headers: Record<string, string>;
  private readonly timeout: number;
  private readonly backlog: Pending[] = [];
  /** Sessions with a request in flight: their next event waits for it. */
  private readonly busy = new Set<string>();
  private inFlight = 0;
  private scheduled = false;
  private closed = false;
  private sent = 0;
  private failed = 0;
  dropped = 0;
  private readonly reports = new ReportThrottle(REPORT_EVERY_MS);

  constructor(readonly url: string, hook: Webhook, private readonly report: (error: unknown) => void) {
    this.events = new Set(hook.events ?? WEBHOOK_EVENTS);
    this.headers = { ...hook.headers, 'Content-Type': 'application/json' };
    this.timeout = hook.timeout ?? DEFAULT_TIMEOUT;
  }

  enqueue(pending: Pending): void {
    if (this.closed) return;
    if (this.backlog.length >= MAX_BACKLOG) {
      this.backlog.shift();
      this.dropped++;
      this.problem(`backlog of ${MAX_BACKLOG} events full: the oldest was dropped (${this.dropped} dropped so far)`);
    }
    this.backlog.push(pending);
    // Requests start after the current event-loop turn: the server's own work comes first.
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.pump();
      });
    }
  }

  stats(): WebhookStats {
    return { url: this.url, queued: this.backlog.length, inFlight: this.inFlight, sent: this.sent, failed: this.failed, dropped: this.dropped };
  }

  close(): void {
    this.closed = true;
    this.backlog.length = 0;
  }

  private pump(): void {
    while (this.inFlight < MAX_IN_FLIGHT && this.backlog.length > 0) {
      const index = this.backlog.findIndex((pending) => !this.busy.has(pending.clientId));
      if (index === -1) return;
      const pending = this.backlog.splice(index, 1)[0]!;
      this.inFlight++;
      this.busy.add(pending.clientId);
      void this.post(pending).finally(() => {
        this.inFlight--;
        this.busy.delete(pending.clientId);
        this.pump();
      });
    }
  }

  private async post(pending: Pending): Promise<void> {
    try {
      const response = await fetch(this.url, {
        method: 'POST',
        headers: this.headers,
        body: pending.body,
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeout),
      });
      // Read the answer so the connection can be reused.
      await response.arrayBuffer();
      if (response.status >= 200 && response.status < 300) {
        this.sent++;
        return;
      }
      this.failed++;
      this.problem(`answered HTTP ${response.status}`);
    } catch (error) {
      this.failed++;
      const timedOut = error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError');
      const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
      this.problem(timedOut ? `no answer within ${this.timeout} ms` : `request failed (${error instanceof Error ? error.message : String(error)}${cause})`, error);
    }
  }

  /** Reports at most once every REPORT_EVERY_MS, counting what was not reported. */
  private problem(message: string, cause?: unknown): void {
    const count = this.reports.count();
    if (count === 0) return;
    const more = count > 1 ? ` (and ${count - 1} more problems since the last report)` : '';
    try {
      this.report(new WebhookError(`webhook ${this.url}: ${message}${more}`, this.url, cause === undefined ? {} : { cause }));
    } catch {
      // Reporting never disturbs the server.
    }
  }
}

/** Sends the server's session events to the configured webhooks. */
export class Webhooks {
  private readonly deliveries: Delivery[];
  private readonly offs: (() => void)[] = [];

  constructor(hooks: readonly Webhook[], server: Pick<Perihelion, 'on'>, report: (error: unknown) => void) {
    this.deliveries = hooks.map((hook) => new Delivery(hook.url, hook, report));
    const wanted = (event: WebhookEvent): boolean => this.deliveries.some((d) => d.events.has(event));
    const emit = (event: WebhookEvent, session: Session, extra: { channel?: string; reason?: DisconnectReason }): void => {
      // Runs inside the server's event: it must be cheap and never throw.
      try {
        const payload: WebhookPayload = { event, clientId: session.id, user: session.identity?.id ?? null, ...extra, at: new Date().toISOString() };
        const pending: Pending = { clientId: session.id, body: JSON.stringify(payload) };
        for (const delivery of this.deliveries) if (delivery.events.has(event)) delivery.enqueue(pending);
      } catch (error) {
        try {
          report(error);
        } catch {
          // ignored
        }
      }
    };
    if (wanted('handshake')) this.offs.push(server.on('handshake', (session) => emit('handshake', session, {})));
    if (wanted('subscribe')) this.offs.push(server.on('subscribe', (session, channel) => emit('subscribe', session, { channel })));
    if (wanted('unsubscribe')) this.offs.push(server.on('unsubscribe', (session, channel) => emit('unsubscribe', session, { channel })));
    if (wanted('disconnect')) this.offs.push(server.on('disconnect', (session, reason) => emit('disconnect', session, { reason })));
  }

  /** Events dropped so far because a webhook's backlog was full, over every webhook. */
  dropped(): number {
    return this.deliveries.reduce((sum, delivery) => sum + delivery.dropped, 0);
  }

  /** Per webhook: waiting, in flight, sent, failed, dropped. */
  stats(): WebhookStats[] {
    return this.deliveries.map((delivery) => delivery.stats());
  }

  /** Stops sending: events are no longer collected and waiting ones are forgotten; requests in flight finish or time out. */
  close(): void {
    for (const off of this.offs.splice(0)) off();
    for (const delivery of this.deliveries) delivery.close();
  }
}
