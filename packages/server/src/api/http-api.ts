/**
 * The HTTP API for backends (outboard mode): any application, in any language, publishes into
 * Perihelion and reads its state with plain HTTP and JSON. Separate from client authentication:
 * every call needs `Authorization: Bearer <apiKey>`; without an `apiKey` the API is off.
 *
 *   POST /api/publish     {channel, data, ext?} or a list of them   → {published: n[, repeated: n]}
 *                         (an Idempotency-Key header makes a retry publish nothing again)
 *   POST /api/deliver     {clientId, channel, data}                  → {delivered: true}
 *                         {user, channel, data}                      → {delivered: n} (every session of the user)
 *                         (an Idempotency-Key header too: a retry reaches only sessions it did not)
 *   POST /api/disconnect  {clientId} or {user}                       → {disconnected: n}
 *   GET  /api/channels                                               → {channels: [{channel, subscribers}]}
 *   GET  /api/presence?channel=/x                                    → {channel, sessions: [{clientId, user}]}
 *   GET  /api/history?channel=/x[&since=epoch:offset][&limit=n]      → {channel, position, messages, complete}
 *   GET  /api/stats                                                  → server statistics
 *
 * docs/openapi.yaml describes the same endpoints (a test keeps the two in step).
 *
 * Errors are `{error: {code, message}}` with a fitting status (see ApiErrorCode).
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { channelProblem, isIdempotencyKey, isMeta, nestedTooDeep, parsePosition } from '@perihelion/protocol';
import type { Perihelion } from '../perihelion.js';
import { PerihelionError } from '../errors.js';
import { exceedsBytes } from '../core/publish.js';
import { readBody } from '../http/body.js';
import { sendApiError, sendJson, sendRawJson } from './json.js';

export const API_PREFIX = '/api/';

/**
 * The request's `Idempotency-Key` (a token, or a quoted string as the IETF draft writes it):
 * undefined without one, an Error saying what is wrong with one that cannot serve. A batch's
 * items are named `<key>#<index>`, which must fit too.
 */
function idempotencyKeyOf(req: IncomingMessage, items: number): string | undefined | Error {
  const header = req.headers['idempotency-key'];
  if (header === undefined) return undefined;
  if (typeof header !== 'string') return new Error('send one Idempotency-Key');
  const key = /^"(.*)"$/.exec(header.trim())?.[1] ?? header.trim();
  const longest = items > 1 ? `${key}#${items - 1}` : key;
  if (!isIdempotencyKey(key) || !isIdempotencyKey(longest)) {
    return new Error(`Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID, say)${items > 1 ? `, with room for "#${items - 1}" in a batch of ${items}` : ''}`);
  }
  return key;
}

interface PublishItem {
  channel: string;
  data: unknown;
  ext?: Record<string, unknown>;
}

/** The API calls the server's public API, nothing else. */
export type ApiServer = Pick<Perihelion, 'options' | 'engine' | 'stats' | 'publish' | 'deliver' | 'deliverToUser' | 'disconnectClient' | 'disconnectUser' | 'historyPage'>;

export class HttpApi {
  private readonly key: Buffer | null;

  constructor(
    private readonly server: ApiServer,
    apiKey: string | undefined,
    /** A failure of the server's own (not the caller's mistake): reported, and answered 500. */
    private readonly reportError: (error: unknown) => void,
  ) {
    this.key = apiKey === undefined ? null : Buffer.from(apiKey);
  }

  handles(path: string): boolean {
    return path.startsWith(API_PREFIX);
  }

  handle(req: IncomingMessage, res: ServerResponse, path: string): void {
    if (!this.key) {
      return sendApiError(res, 404, 'api_disabled', 'the HTTP API is off: set PERIHELION_API_KEY (or the apiKey option) to enable it');
    }
    if (!this.authorized(req)) {
      return sendApiError(res, 401, 'unauthorized', 'send Authorization: Bearer <api key>', { 'WWW-Authenticate': 'Bearer realm="perihelion"' });
    }
    this.route(req, res, path.slice(API_PREFIX.length)).catch((error: unknown) => {
      if (res.headersSent) return res.destroy();
      if (error instanceof PerihelionError && error.code === 'ERR_SERVER_CLOSED') return sendApiError(res, 503, 'unavailable', 'the server is shutting down');
      // The cluster's store is away (the node still serves its own sessions): worth a retry.
      if (error instanceof PerihelionError && error.code === 'ERR_ENGINE_UNAVAILABLE') {
        return sendApiError(res, 503, 'engine_unavailable', error.message, { 'Retry-After': '1' });
      }
      // What the server's own checks refused (a channel, data JSON cannot hold) is the caller's mistake.
      if (error instanceof PerihelionError && error.code === 'ERR_INVALID_CHANNEL') return sendApiError(res, 400, 'invalid_channel', error.message);
      if (error instanceof PerihelionError && error.code === 'ERR_INVALID_ARGUMENT') return sendApiError(res, 400, 'invalid_request', error.message);
      this.reportError(error);
      sendApiError(res, 500, 'internal_error', `internal error: ${(error as Error).message}`);
    });
  }

  private authorized(req: IncomingMessage): boolean {
    const match = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    if (!match || !this.key) return false;
    const presented = Buffer.from(match[1]!);
    return presented.length === this.key.length && timingSafeEqual(presented, this.key);
  }

  private async route(req: IncomingMessage, res: ServerResponse, endpoint: string): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const routes: Record<string, { method: 'GET' | 'POST'; run: () => Promise<void> }> = {
      publish: { method: 'POST', run: async () => this.publish(req, res, await this.body(req, res)) },
      deliver: { method: 'POST', run: async () => this.deliver(req, res, await this.body(req, res)) },
      disconnect: { method: 'POST', run: async () => this.disconnect(res, await this.body(req, res)) },
      channels: { method: 'GET', run: () => this.channels(res) },
      presence: { method: 'GET', run: () => this.presence(res, url.searchParams.get('channel')) },
      history: { method: 'GET', run: () => this.history(res, url.searchParams) },
      stats: { method: 'GET', run: async () => sendJson(res, 200, { ...this.server.stats(), history: await this.server.engine.historyStats() }) },
    };
    const route = Object.hasOwn(routes, endpoint) ? routes[endpoint] : undefined;
    if (!route) return sendApiError(res, 404, 'not_found', `no endpoint /api/${endpoint}; the endpoints are ${Object.keys(routes).map((r) => `/api/${r}`).join(', ')}`);
    // HEAD is GET without the body (node leaves the body out of a HEAD's response).
    if (req.method !== route.method && !(route.method === 'GET' && req.method === 'HEAD')) {
      const allowed = route.method === 'GET' ? 'GET, HEAD' : route.method;
      return sendApiError(res, 405, 'method_not_allowed', `/api/${endpoint} takes ${allowed}`, { Allow: allowed });
    }
    await route.run();
  }

  /** The parsed JSON body, or undefined when an error was already sent. */
  private async body(req: IncomingMessage, res: ServerResponse): Promise<unknown> {
    const body = await readBody(req, this.server.options.maxRequestBytes, this.server.options.bodyTimeout);
    if (!body.ok) {
      sendApiError(res, body.status, body.status === 413 ? 'too_large' : 'invalid_request', body.reason);
      return undefined;
    }
    if (nestedTooDeep(body.text, this.server.options.maxDepth)) {
      sendApiError(res, 400, 'invalid_json', `the body nests deeper than ${this.server.options.maxDepth} levels (maxDepth)`);
      return undefined;
    }
    try {
      return JSON.parse(body.text) as unknown;
    } catch (error) {
      sendApiError(res, 400, 'invalid_json', `the body is not JSON (${(error as Error).message})`);
      return undefined;
    }
  }

  private async publish(req: IncomingMessage, res: ServerResponse, body: unknown): Promise<void> {
    if (body === undefined) return;
    const items = Array.isArray(body) ? body : [body];
    if (items.length === 0 || items.length > this.server.options.maxBatch) {
      return sendApiError(res, 400, 'invalid_request', `send one {channel, data} or a list of 1 to ${this.server.options.maxBatch}`);
    }
    const key = idempotencyKeyOf(req, items.length);
    if (key instanceof Error) return sendApiError(res, 400, 'invalid_request', key.message);
    // Everything is checked before anything is published: a batch is published whole or not at all.
    for (const [index, item] of items.entries()) {
      const problem = this.publishProblem(item);
      if (problem) return sendApiError(res, problem.code === 'too_large' ? 413 : 400, problem.code, items.length > 1 ? `item ${index}: ${problem.message}` : problem.message);
    }
    let published = 0;
    for (const [index, item] of (items as PublishItem[]).entries()) {
      // Each item of a batch is named apart: a retry of a batch that failed half-way publishes the rest.
      const options = { ...(item.ext ? { ext: item.ext } : {}), ...(key !== undefined ? { idempotencyKey: index === 0 ? key : `${key}#${index}` } : {}) };
      if (await this.server.publish(item.channel, item.data, options)) published++;
    }
    sendJson(res, 200, key === undefined ? { published } : { published, repeated: items.length - published });
  }

  private publishProblem(item: unknown): { code: 'invalid_request' | 'invalid_channel' | 'too_large'; message: string } | null {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return { code: 'invalid_request', message: 'expected an object {channel, data}' };
    const { channel, data, ext } = item as Record<string, unknown>;
    if (channel === undefined) return { code: 'invalid_request', message: '"channel" is required' };
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.server.options.maxChannelLength });
    if (problem) return { code: 'invalid_channel', message: `channel ${JSON.stringify(channel)}: ${problem}` };
    if (isMeta(channel as string)) return { code: 'invalid_channel', message: 'cannot publish to a meta channel' };
    if (data === undefined) return { code: 'invalid_request', message: '"data" is required' };
    if (ext !== undefined && (typeof ext !== 'object' || ext === null || Array.isArray(ext))) return { code: 'invalid_request', message: '"ext" must be an object' };
    const size = this.sizeProblem({ channel, data, ...(ext !== undefined ? { ext } : {}) });
    if (size) return { code: 'too_large', message: size };
    return null;
  }

  /**
   * maxMessageBytes, as for a client's publish: the message as it is published, serialised.
   * (A client's is measured after the extensions; here before them, as the API refuses before
   * the server is asked.)
   */
  private sizeProblem(message: { channel: unknown; data: unknown; ext?: unknown }): string | null {
    const limit = this.server.options.maxMessageBytes;
    return exceedsBytes(JSON.stringify(message), limit) ? `the message is larger than ${limit} bytes (maxMessageBytes)` : null;
  }

  private async deliver(req: IncomingMessage, res: ServerResponse, body: unknown): Promise<void> {
    if (body === undefined) return;
    const { clientId, user, channel, data } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
    // One session by its id, or every session of one user: exactly one of the two.
    if ((clientId === undefined) === (user === undefined)) return sendApiError(res, 400, 'invalid_request', 'send "clientId" (one session) or "user" (every session of a user), one of the two');
    if (clientId !== undefined && typeof clientId !== 'string') return sendApiError(res, 400, 'invalid_request', '"clientId" is a string');
    if (user !== undefined && (typeof user !== 'string' || user === '')) return sendApiError(res, 400, 'invalid_request', '"user" is a non-empty string');
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.server.options.maxChannelLength });
    if (problem) return sendApiError(res, 400, 'invalid_channel', `channel ${JSON.stringify(channel)}: ${problem}`);
    if (isMeta(channel as string)) return sendApiError(res, 400, 'invalid_channel', 'cannot deliver on a meta channel');
    if (data === undefined) return sendApiError(res, 400, 'invalid_request', '"data" is required');
    const size = this.sizeProblem({ channel, data });
    if (size) return sendApiError(res, 413, 'too_large', size);
    const key = idempotencyKeyOf(req, 1);
    if (key instanceof Error) return sendApiError(res, 400, 'invalid_request', key.message);
    const options = key !== undefined ? { idempotencyKey: key } : {};
    // The engine finds the sessions on whichever node holds them (Redis engine: any node of the cluster).
    if (typeof user === 'string') return sendJson(res, 200, { delivered: await this.server.deliverToUser(user, channel as string, data, options) });
    if (!(await this.server.deliver(clientId as string, channel as string, data, options))) return sendApiError(res, 404, 'session_not_found', `no session ${String(clientId)}`);
    sendJson(res, 200, { delivered: true });
  }

  private async disconnect(res: ServerResponse, body: unknown): Promise<void> {
    if (body === undefined) return;
    const { clientId, user } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
    // Wherever the sessions are: with the Redis engine, on any node of the cluster.
    if (typeof clientId === 'string') {
      if (!(await this.server.disconnectClient(clientId))) return sendApiError(res, 404, 'session_not_found', `no session ${clientId}`);
      return sendJson(res, 200, { disconnected: 1 });
    }
    if (typeof user === 'string') return sendJson(res, 200, { disconnected: await this.server.disconnectUser(user) });
    sendApiError(res, 400, 'invalid_request', 'send {"clientId": "..."} or {"user": "..."}');
  }

  private async channels(res: ServerResponse): Promise<void> {
    const channels = [...(await this.server.engine.channels())].map(([channel, subscribers]) => ({ channel, subscribers }));
    channels.sort((a, b) => a.channel.localeCompare(b.channel));
    sendJson(res, 200, { channels });
  }

  private async presence(res: ServerResponse, channel: string | null): Promise<void> {
    const problem = channelProblem(channel);
    if (problem) return sendApiError(res, 400, 'invalid_channel', `?channel=${JSON.stringify(channel)}: ${problem}`);
    const clientIds = await this.server.engine.subscribers(channel!);
    // Users as the engine knows them: with Redis, those of sessions on other nodes too.
    const users = await this.server.engine.usersOf(clientIds);
    const sessions = clientIds.map((clientId, i) => ({ clientId, user: users[i] ?? null }));
    sendJson(res, 200, { channel, sessions });
  }

  /** GET /api/history?channel=/x[&since=epoch:offset][&limit=n] */
  private async history(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const channel = query.get('channel');
    const problem = channelProblem(channel, { allowWildcard: false, maxLength: this.server.options.maxChannelLength });
    if (problem) return sendApiError(res, 400, 'invalid_channel', `?channel=${JSON.stringify(channel)}: ${problem}`);
    const sinceText = query.get('since');
    const since = sinceText === null ? undefined : parsePosition(sinceText);
    if (since === null) return sendApiError(res, 400, 'invalid_request', `?since=${JSON.stringify(sinceText)}: a position is "epoch:offset", as in a message's ext.position`);
    const limitText = query.get('limit');
    if (limitText !== null && !/^\d{1,7}$/.test(limitText)) return sendApiError(res, 400, 'invalid_request', `?limit=${JSON.stringify(limitText)}: a whole number`);
    const page = await this.server.historyPage(channel!, { ...(since ? { since } : {}), ...(limitText !== null ? { limit: Number(limitText) } : {}) });
    if (!page) return sendApiError(res, 404, 'no_history', `${channel} keeps no history (historySize 0, a history rule with size 0, or a meta or service channel)`);
    // The kept messages are already JSON: joined as they are, not parsed and serialised again.
    const head = JSON.stringify({ channel, position: page.position, complete: page.complete });
    sendRawJson(res, 200, `${head.slice(0, -1)},"messages":[${page.payloads.join(',')}]}`);
  }
}
