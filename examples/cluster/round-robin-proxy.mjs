/**
 * A small HTTP reverse proxy with no affinity at all: every HTTP request, and every WebSocket
 * upgrade, goes to the next target in turn. Nothing ties a client to a node: not its cookie, not
 * its address, not its keep-alive connection (each target has its own agent, so the proxy's
 * connection to the client is never pinned to one upstream connection).
 *
 * That is the worst case for a Bayeux server with sessions: a long-polling client's handshake,
 * its held connect and its publish land on three different nodes. Perihelion's nodes forward
 * each request to the node that holds the session (see the examples README).
 *
 *   startProxy({ port: 8080, targets: ['http://127.0.0.1:8081', 'http://127.0.0.1:8082'] })
 *     → { url, port, close(), counts(), onRequest }
 *
 * - hop-by-hop headers (Connection and the headers it names, Keep-Alive, TE, Trailer,
 *   Transfer-Encoding, Upgrade, Proxy-*) are not passed on; Host is kept (the nodes check a
 *   WebSocket's Origin against it) and X-Forwarded-For/-Host/-Proto are added;
 * - no timeout cuts a request: a held long-poll (up to a minute) or a stream (SSE, HTTP
 *   streaming, WebSocket) lasts as long as the client and the node keep it;
 * - a target that cannot be reached gets its request answered 502 (an upgrade too), and the proxy
 *   goes on serving; the next request goes to the next target. Like nginx (max_fails=1
 *   fail_timeout=10s), a target whose connection failed is then skipped for `failTimeout` ms
 *   (0: never skipped): without that, a client whose requests come in a fixed cycle can keep
 *   meeting the dead node at the same step of its cycle.
 */
import http from 'node:http';

/** Headers that describe one connection, never passed on (RFC 9110 §7.6.1, plus the old Proxy-Connection). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** The headers of `headers` (a node:http headers object) that are end-to-end. */
function endToEnd(headers) {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((token) => token.trim().toLowerCase())
      .filter(Boolean),
  );
  const out = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** The request's headers as the target gets them: end-to-end ones plus X-Forwarded-*. */
function forwardedHeaders(req) {
  const headers = endToEnd(req.headers);
  const address = req.socket.remoteAddress ?? '';
  headers['x-forwarded-for'] = req.headers['x-forwarded-for'] ? `${req.headers['x-forwarded-for']}, ${address}` : address;
  if (req.headers.host !== undefined) headers['x-forwarded-host'] ??= req.headers.host;
  headers['x-forwarded-proto'] ??= 'http';
  return headers;
}

/**
 * Starts the proxy. `targets`: base URLs of the nodes (`http://127.0.0.1:8081`). `onRequest(req,
 * target)` is called for every request and upgrade with the target chosen (tests count with it).
 */
export async function startProxy({ port = 0, host = '127.0.0.1', targets, onRequest, failTimeout = 10_000 } = {}) {
  if (!Array.isArray(targets) || targets.length === 0) throw new TypeError('startProxy: targets must be a non-empty array of URLs');
  const upstreams = targets.map((target) => {
    const url = new URL(target);
    return {
      target: url.origin,
      hostname: url.hostname,
      port: Number(url.port || 80),
      // One agent per target: keep-alive to each node, and no pooling across nodes.
      agent: new http.Agent({ keepAlive: true, maxSockets: Infinity }),
      requests: 0,
      upgrades: 0,
      errors: 0,
      /** Skipped until then (ms since the epoch) after a failed connection. */
      downUntil: 0,
    };
  });
  let turn = 0;
  /** The next target in turn that is not skipped (if all are, the next one anyway). */
  const next = () => {
    const now = Date.now();
    for (let i = 0; i < upstreams.length; i++) {
      const upstream = upstreams[turn++ % upstreams.length];
      if (upstream.downUntil <= now) return upstream;
    }
    return upstreams[turn++ % upstreams.length];
  };
  /** A request could not reach `upstream` (or it went away mid-answer). */
  const failed = (upstream) => {
    upstream.errors++;
    if (failTimeout > 0) upstream.downUntil = Date.now() + failTimeout;
  };
  /** Sockets of upgraded connections (both ends), destroyed by close(). */
  const tunnels = new Set();

  const server = http.createServer((req, res) => {
    const upstream = next();
    upstream.requests++;
    onRequest?.(req, upstream.target);
    const outgoing = http.request({
      hostname: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req),
      agent: upstream.agent,
    });
    outgoing.on('response', (incoming) => {
      res.writeHead(incoming.statusCode ?? 502, incoming.statusMessage, endToEnd(incoming.headers));
      // Streams (SSE, ndjson) start at once, not with their first chunk.
      res.flushHeaders();
      incoming.pipe(res);
      // The node went away mid-answer (a stream of a killed node): the client sees its line end.
      incoming.on('close', () => {
        if (!incoming.complete) res.destroy();
      });
    });
    let clientLeft = false;
    outgoing.on('error', (error) => {
      if (clientLeft) return;
      failed(upstream);
      if (!res.headersSent) {
        const body = `502 Bad Gateway: ${upstream.target} did not answer (${error.code ?? error.message})\n`;
        res.writeHead(502, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' }).end(body);
      } else {
        res.destroy();
      }
    });
    // The client left (gave up a held long-poll, closed a stream): so does the request to the node.
    res.on('close', () => {
      if (res.writableFinished) return;
      clientLeft = true;
      outgoing.destroy();
    });
    req.on('error', () => outgoing.destroy());
    req.pipe(outgoing);
  });

  server.on('upgrade', (req, socket, head) => {
    const upstream = next();
    upstream.upgrades++;
    onRequest?.(req, upstream.target);
    socket.on('error', () => socket.destroy());
    const headers = { ...forwardedHeaders(req), connection: 'Upgrade', upgrade: req.headers.upgrade ?? 'websocket' };
    // Its own connection (no agent): an upgraded socket never goes back to a pool.
    const outgoing = http.request({ hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent: false });
    outgoing.on('upgrade', (incoming, upstreamSocket, upstreamHead) => {
      const lines = [`HTTP/1.1 ${incoming.statusCode} ${incoming.statusMessage}`];
      for (let i = 0; i < incoming.rawHeaders.length; i += 2) lines.push(`${incoming.rawHeaders[i]}: ${incoming.rawHeaders[i + 1]}`);
      if (socket.destroyed) return upstreamSocket.destroy();
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (upstreamHead.length > 0) socket.write(upstreamHead);
      if (head.length > 0) upstreamSocket.write(head);
      for (const s of [socket, upstreamSocket]) {
        s.setTimeout(0);
        s.setNoDelay(true);
        s.setKeepAlive(true, 30_000);
        tunnels.add(s);
        s.on('close', () => tunnels.delete(s));
      }
      upstreamSocket.on('error', () => socket.destroy());
      socket.on('error', () => upstreamSocket.destroy());
      upstreamSocket.on('close', () => socket.destroy());
      socket.on('close', () => upstreamSocket.destroy());
      upstreamSocket.pipe(socket);
      socket.pipe(upstreamSocket);
    });
    // The node refused the upgrade (403 for a foreign origin, say): its answer goes back as it is.
    outgoing.on('response', (incoming) => {
      const lines = [`HTTP/1.1 ${incoming.statusCode} ${incoming.statusMessage}`];
      for (const [name, value] of Object.entries(endToEnd(incoming.headers))) for (const v of [value].flat()) lines.push(`${name}: ${v}`);
      lines.push('connection: close');
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      incoming.pipe(socket);
      incoming.on('error', () => socket.destroy());
    });
    outgoing.on('error', (error) => {
      failed(upstream);
      if (socket.destroyed) return;
      const body = `502 Bad Gateway: ${upstream.target} did not answer (${error.code ?? error.message})\n`;
      socket.end(`HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    socket.on('close', () => outgoing.destroy());
    outgoing.end();
  });

  // No timeout of the proxy's own may cut a held long-poll or an endless stream; the nodes bound
  // a stalled request body themselves (bodyTimeout).
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  server.timeout = 0;
  server.keepAliveTimeout = 65_000;
  server.on('clientError', (_error, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const shown = host === '0.0.0.0' || host === '::' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${address.port}`,
    port: address.port,
    /** Requests (HTTP and upgrades) each target got so far, and how many of them failed. */
    counts() {
      return upstreams.map(({ target, requests, upgrades, errors, downUntil }) => ({ target, requests, upgrades, errors, skipped: downUntil > Date.now() }));
    },
    async close() {
      const closed = new Promise((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      for (const socket of tunnels) socket.destroy();
      for (const upstream of upstreams) upstream.agent.destroy();
      await closed;
    },
  };
}
