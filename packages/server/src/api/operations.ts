/**
 * Endpoints for operators: `/health` (the process answers), `/ready` (the engine is up and the
 * server is not shutting down: a load balancer stops sending new clients when it is not), and
 * `/metrics` (Prometheus text format).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ServerCore } from '../core/server.js';
import { sendJson } from './json.js';
import type { Metrics } from './metrics.js';

export const OPERATION_PATHS = new Set(['/health', '/ready', '/metrics']);

export async function handleOperation(core: Pick<ServerCore, 'isReady' | 'isDraining'>, metrics: Metrics, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' }).end();
    return;
  }
  if (path === '/health') return sendJson(res, 200, { status: 'ok' });
  if (path === '/ready') {
    const ready = core.isReady;
    return sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : core.isDraining ? 'shutting down' : 'starting' });
  }
  const text = await metrics.registry.metrics();
  res.writeHead(200, { 'Content-Type': metrics.registry.contentType, 'Cache-Control': 'no-store' }).end(text);
}
