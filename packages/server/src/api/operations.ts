/**
 * Endpoints for operators: `/health` (the process answers), `/ready` (the engine is up and reaches
 * its store, the server is neither overloaded nor shutting down: a load balancer stops sending new
 * clients when it is not), and `/metrics` (Prometheus text format).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ServerCore } from '../core/server.js';
import { sendJson } from './json.js';
import type { Metrics } from './metrics.js';

export const OPERATION_PATHS = new Set(['/health', '/ready', '/metrics']);

export async function handleOperation(core: Pick<ServerCore, 'isReady' | 'isDraining' | 'load' | 'engineAway'>, metrics: Metrics, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' }).end();
    return;
  }
  if (path === '/health') return sendJson(res, 200, { status: 'ok' });
  if (path === '/ready') {
    if (!core.isReady) return sendJson(res, 503, { status: core.isDraining ? 'shutting down' : 'starting' });
    // Overloaded, or cut off from the cluster's Redis: still serving its sessions, but a balancer
    // should send new clients elsewhere (a node that reaches Redis delivers them every publish).
    const overloaded = core.load.refusesSessions();
    if (overloaded) return sendJson(res, 503, { status: 'overloaded', reason: overloaded });
    const away = core.engineAway;
    if (away) return sendJson(res, 503, { status: 'engine unavailable', reason: away });
    return sendJson(res, 200, { status: 'ready' });
  }
  const text = await metrics.registry.metrics();
  res.writeHead(200, { 'Content-Type': metrics.registry.contentType, 'Cache-Control': 'no-store' }).end(text);
}
