/**
 * The SharedWorker side of tab sharing. The same script that defines `Perihelion` in a page
 * (`<mount>/client.js`) serves as the worker: loaded in a SharedWorkerGlobalScope it starts a
 * hub instead. The first tab's hello carries the URL and the options (plain data only); every
 * tab gets its own MessagePort.
 */
import { Bayeux } from './bayeux.js';
import { Hub, type Send, type Wire } from './hub.js';
import { resolveOptions } from './options.js';

/** Starts the hub when running as a SharedWorker; does nothing anywhere else. */
export function serveSharedWorker(): void {
  const g = globalThis as unknown as {
    SharedWorkerGlobalScope?: abstract new () => unknown;
    onconnect: ((event: MessageEvent) => void) | null;
    navigator?: { locks?: LockManager };
  };
  if (typeof g.SharedWorkerGlobalScope !== 'function' || !(globalThis instanceof g.SharedWorkerGlobalScope)) return;
  const ports = new Map<string, MessagePort>();
  let hub: Hub | null = null;
  const send: Send = (message, to) => {
    if (to !== undefined) ports.get(to)?.postMessage(message);
    else for (const port of ports.values()) port.postMessage(message);
  };
  g.onconnect = (event: MessageEvent) => {
    const port = event.ports[0]!;
    port.onmessage = (incoming: MessageEvent<Wire>) => {
      const message = incoming.data;
      if (message.t === 'hello') {
        ports.set(message.from, port);
        if (!hub && message.config) {
          const { url, resolved } = resolveOptions(message.config.url, message.config.options);
          hub = new Hub((events) => new Bayeux(url, resolved, events), send, null, g.navigator?.locks, `perihelion:${url}`, (tab) => ports.delete(tab));
        }
      }
      hub?.handle(message);
    };
    port.start();
  };
}
