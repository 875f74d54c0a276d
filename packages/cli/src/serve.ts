import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import { PerihelionError, RedisEngine, WorkersEngine, authenticateByCertificate, createServer, takeHandedConnections, type Engine, type Perihelion } from '@perihelion/server';
import { DASHBOARD_RULES, installDashboard } from './dashboard.js';
import { DEMO_RULES, demoPage, installDemo, type Demo } from './demo.js';
import { ECHO_CHANNEL, SERVICE_RULES, installServices } from './services.js';
import { SettingsError, type Settings } from './settings.js';
import { describeCertificate, describeClientCertificates, readTls } from './tls.js';

/** How many rules the user gave; the command's own (its services, the demo) are not theirs to count. */
function rulesSummary(userRules: number): string {
  return `${userRules === 0 ? 'no rules' : `${userRules} rule${userRules === 1 ? '' : 's'}`} of yours, besides this command's own for its services`;
}

/** What a newcomer must know about who may do what on this server. */
function securitySummary(server: Perihelion, userRules: number, byCertificate: boolean): string[] {
  const { open, anonymous, sessionBinding, allowedOrigins } = server.options;
  if (open) {
    return ['WARNING: open mode: any client may publish and subscribe on any channel. Use it for development only.'];
  }
  return [
    `anonymous access: ${anonymous ? 'on (handshakes without a token get a session)' : 'off (a token in ext.token is required)'}`,
    `authentication: ${byCertificate ? "client certificates (a certificate's CN is its user)" : server.authenticates ? 'signed tokens (JWT) or the configured authenticator' : 'none configured'}`,
    `authorization: clients may subscribe to broadcast channels; they publish only where a rule allows (${rulesSummary(userRules)})`,
    `session binding: ${sessionBinding}; cross-origin: ${allowedOrigins.length > 0 ? allowedOrigins.join(', ') : 'same origin only'}`,
  ];
}

function engineSummary(server: Perihelion, workers: number): string {
  const { engine } = server;
  if (engine instanceof RedisEngine) {
    const where = engine.options.cluster ? `Redis Cluster ${engine.where}, ${engine.options.partitions} partitions` : engine.where;
    return `redis (cluster mode: ${where}, key prefix "${engine.options.prefix}", node ${engine.nodeId}${workers > 1 ? `, ${workers} workers here` : ''})`;
  }
  if (engine instanceof WorkersEngine) return `workers (${workers} processes, their store in the primary process; --redis for several machines)`;
  return `${engine.name}${engine.name === 'memory' ? ' (this process only; --redis for cluster mode)' : ''}`;
}

/** Structured JSON logs on stderr (stdout keeps the human summary and nothing else). */
/** `starting`: the engine has not started yet; an engine that cannot start is this command's to say, once, as it exits (status 2, bin.ts). */
function attachLogger(server: Perihelion, logger: Logger, starting: () => boolean): void {
  server.on('error', (error) => {
    if (starting() && error instanceof PerihelionError && error.code === 'ERR_ENGINE_UNAVAILABLE') return;
    // A condition the server survives and describes (Redis away, a call-out or webhook that
    // failed): a warning whose message says it all; a stack would only point into the server.
    // Anything else is unexpected, with its stack.
    if (error instanceof PerihelionError) logger.warn({ code: error.code, ...(error.cause instanceof Error ? { cause: error.cause.message } : {}) }, error.message);
    else logger.error({ err: error }, 'server error');
  });
  server.on('restored', (message) => logger.info(message));
  server.on('handshake', (session) => logger.debug({ clientId: session.id, user: session.identity?.id, address: session.remoteAddress }, 'handshake'));
  server.on('disconnect', (session, reason) => logger.debug({ clientId: session.id, reason }, 'session ended'));
  server.on('subscribe', (session, channel) => logger.trace({ clientId: session.id, channel }, 'subscribe'));
}

export interface Running {
  server: Perihelion;
  url: string;
  /** The demo gallery's server side; null with the demo off. */
  demo: Demo | null;
  /** Reads the TLS certificate and key again (SIGHUP), keeping those in use when they cannot serve; nothing without TLS. */
  reloadTls(): void;
  stop(): Promise<void>;
}

/** A worker of `--workers` (see workers.ts): its node id, and the address its primary listens on and hands it connections from. */
export interface WorkerSeat {
  node: string;
  address: AddressInfo;
}

/**
 * Starts the server described by `settings` and reports what it serves. `worker`: this process
 * is that worker of `--workers`, and serves the connections its primary hands over.
 */
export async function serve(settings: Settings, log: (line: string) => void = console.log, worker?: WorkerSeat): Promise<Running> {
  // Every process runs the demo gallery: one of them holds its state channels and prices (demo.ts).
  const workers = settings.workers ?? 1;
  const demo = settings.demo;
  // The built-in services may be called by anyone; the demo's pages publish to its chat and
  // counter, and nowhere else.
  const rules = [...SERVICE_RULES, ...DASHBOARD_RULES, ...(demo ? DEMO_RULES : []), ...(settings.server.channels ?? [])];
  const options = { ...settings.server, channels: rules };
  // Read before anything starts: files that cannot serve stop the command with the reason.
  const tls = settings.tls ? readTls(settings.tls) : undefined;
  // Cluster mode: every node started with the same --redis acts as one server; so do the
  // workers of one machine, through the primary process.
  const engine: Engine | undefined =
    settings.redis !== undefined
      ? new RedisEngine({
          url: settings.redis,
          ...(settings.redisCluster ? { cluster: true } : {}),
          ...(settings.redisPartitions !== undefined ? { partitions: settings.redisPartitions } : {}),
          ...(settings.redisPrefix !== undefined ? { prefix: settings.redisPrefix } : {}),
          ...(settings.redisHeartbeatInterval !== undefined ? { heartbeatInterval: settings.redisHeartbeatInterval } : {}),
          ...(settings.redisNodeTimeout !== undefined ? { nodeTimeout: settings.redisNodeTimeout } : {}),
          ...(settings.redisNodeMessageInlineBytes !== undefined ? { nodeMessageInlineBytes: settings.redisNodeMessageInlineBytes } : {}),
        })
      : worker !== undefined
        ? new WorkersEngine(undefined, worker.node)
        : undefined;
  const server = createServer(engine ? { ...options, engine } : options);
  // An error's cause as an object of its own: the server's messages already say it, and pino's
  // default would add it to the message a second time.
  let starting = true;
  attachLogger(server, pino({ level: settings.logLevel ?? 'info', base: null, serializers: { err: pino.stdSerializers.errWithCause } }, pino.destination(2)), () => starting);
  // An engine that cannot start (Redis unreachable) stops the server here, before it listens.
  await server.whenReady();
  starting = false;
  // The dashboard at /dashboard (its data gated, see dashboard.ts), then the demo pages, then 404.
  let dashboard: ReturnType<typeof installDashboard>;
  let gallery: Demo | null = null;
  try {
    installServices(server);
    if (demo) gallery = installDemo(server);
    dashboard = installDashboard(server);
  } catch (error) {
    // The only setting that can refuse the command's own service channels.
    if (!(error instanceof PerihelionError) || error.code !== 'ERR_INVALID_CHANNEL') throw error;
    await server.close();
    throw new SettingsError(`--max-channel-length ${server.options.maxChannelLength} is too short for the channels this command serves itself (${error.message}); raise it to 32 or more`);
  }
  const demoPages = demo ? demoPage() : null;
  const fallback = (req: IncomingMessage, res: ServerResponse): void => {
    if (dashboard.handle(req, res)) return;
    if (demoPages) return demoPages(req, res);
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`Not found. The Bayeux endpoint is ${server.options.path}\n`);
  };
  let address: AddressInfo;
  if (worker) {
    takeHandedConnections(server.serveHandedConnections({ fallback, ...(tls ? { tls } : {}) }));
    address = worker.address;
  } else {
    address = await server.listen({ port: settings.port, ...(settings.host !== undefined ? { host: settings.host } : {}), fallback, ...(tls ? { tls } : {}) });
  }
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const shown = host === '[::]' || host === '0.0.0.0' ? 'localhost' : host;
  const url = `${tls ? 'https' : 'http'}://${shown}:${address.port}`;
  log(`Perihelion listening on ${url}`);
  log(`  Bayeux endpoint: ${url}${server.options.path}`);
  if (tls) {
    const { summary, warning } = describeCertificate(tls);
    log(`  TLS: ${summary} (SIGHUP reads it again)`);
    if (warning) console.error(`perihelion: WARNING: ${warning}`);
    const clients = describeClientCertificates(tls);
    if (clients !== null) log(`  TLS: ${clients}${settings.server.jwt === undefined ? "; a certificate's CN is its user" : ''}`);
  }
  log(`  transports: ${server.options.transports.join(', ')}${server.options.jsonp ? ' (JSONP is on: it bypasses the same-origin policy)' : ''}`);
  log(`  engine: ${engineSummary(server, workers)}`);
  for (const line of securitySummary(server, settings.server.channels?.length ?? 0, settings.server.authenticate === authenticateByCertificate)) log(`  ${line}`);
  log(`  HTTP API: ${server.options.apiKey !== undefined ? `${url}/api/ (Authorization: Bearer <PERIHELION_API_KEY>)` : 'off (set PERIHELION_API_KEY to enable it)'}`);
  if (server.options.operations) log(`  operations: ${url}/health ${url}/ready ${url}/metrics`);
  log(`  services: ${ECHO_CHANNEL} (answers the caller with what it sent)`);
  if (demo) log(`  demo page: ${url}/`);
  log(`  dashboard: ${url}/dashboard (${dashboard.summary})`);
  const reloadTls = (): void => {
    if (!settings.tls) return;
    try {
      const renewed = readTls(settings.tls);
      server.reloadTls(renewed);
      const { summary, warning } = describeCertificate(renewed);
      log(`TLS: reloaded, ${summary}`);
      if (warning) console.error(`perihelion: WARNING: ${warning}`);
    } catch (error) {
      if (!(error instanceof SettingsError || error instanceof PerihelionError)) throw error;
      console.error(`perihelion: TLS not reloaded, the certificate in use stays: ${error.message}`);
    }
  };
  return { server, url, demo: gallery, reloadTls, stop: () => (dashboard.close(), gallery?.stop(), server.close()) };
}
