import { createServer, type Perihelion } from '@perihelion/server';
import { demoPage, installDemo } from './demo.js';
import type { Settings } from './settings.js';

export interface Running {
  server: Perihelion;
  url: string;
  stop(): Promise<void>;
}

/** Starts the server described by `settings` and reports what it serves. */
export async function serve(settings: Settings, log: (line: string) => void = console.log): Promise<Running> {
  const server = createServer(settings.server);
  if (settings.demo) installDemo(server);
  const listenOptions = { port: settings.port, ...(settings.host !== undefined ? { host: settings.host } : {}), ...(settings.demo ? { fallback: demoPage() } : {}) };
  const address = await server.listen(listenOptions);
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const shown = host === '[::]' || host === '0.0.0.0' ? 'localhost' : host;
  const url = `http://${shown}:${address.port}`;
  log(`Perihelion listening on ${url}`);
  log(`  Bayeux endpoint: ${url}${server.options.path}`);
  log(`  transports: ${server.options.transports.join(', ')}${server.options.jsonp ? ' (JSONP is on: it bypasses the same-origin policy)' : ''}`);
  log(`  engine: ${server.engine.name}`);
  if (settings.demo) log(`  demo page: ${url}/`);
  return { server, url, stop: () => server.close() };
}
