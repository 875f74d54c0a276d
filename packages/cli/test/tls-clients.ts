/**
 * Third-party clients in their plain setup against an HTTPS endpoint, run by tls.test.ts as a
 * child process whose NODE_EXTRA_CA_CERTS trusts the test's certificate (as a machine that trusts
 * its certificate authority does; nothing is configured in the clients). CometD, Faye and the
 * Perihelion client each subscribe over long-polling and over WebSocket, then a Faye client
 * publishes 1 to 10; what each received is printed as one line of JSON.
 *
 * Usage: node tls-clients.js <https endpoint> <channel>. Without arguments (the test runner runs
 * every file of this folder) it does nothing.
 */
import { adapt } from 'cometd-nodejs-client';
import { CometD, type Message as CometDMessage } from 'cometd';
import faye from 'faye';
import { WebSocket } from 'ws';
import { Client } from '@perihelion/client';

const COUNT = 10;

async function main(url: string, channel: string): Promise<void> {
  adapt();
  const received: Record<string, unknown[]> = {};
  const stops: Array<() => Promise<unknown>> = [];
  for (const transport of ['long-polling', 'websocket'] as const) {
    const cometd = new CometD();
    cometd.unregisterTransport(transport === 'websocket' ? 'long-polling' : 'websocket');
    cometd.configure({ url, logLevel: 'warn' });
    const cometdData: unknown[] = (received[`CometD ${transport}`] = []);
    stops.push(() => new Promise((resolve) => cometd.disconnect(resolve)));
    await new Promise<void>((resolve, reject) =>
      cometd.handshake((reply) => {
        if (!reply.successful) return reject(new Error(`CometD ${transport}: ${JSON.stringify(reply)}`));
        cometd.subscribe(channel, (message: CometDMessage) => void cometdData.push(message.data), (sub) => (sub.successful ? resolve() : reject(new Error(JSON.stringify(sub)))));
      }),
    );
    const fayeClient = new faye.Client(url);
    if (transport === 'long-polling') fayeClient.disable('websocket');
    const fayeData: unknown[] = (received[`Faye ${transport}`] = []);
    stops.push(async () => fayeClient.disconnect());
    await fayeClient.subscribe(channel, (value) => void fayeData.push(value));
    // In Node 20 the Perihelion client is given `ws` (its README's Node set-up).
    const perihelion = new Client(url, { transports: [transport], WebSocket });
    const perihelionData: unknown[] = (received[`Perihelion ${transport}`] = []);
    stops.push(() => perihelion.disconnect());
    await perihelion.subscribe(channel, (value) => void perihelionData.push(value));
  }
  const publisher = new faye.Client(url);
  publisher.disable('websocket');
  for (let n = 1; n <= COUNT; n++) await publisher.publish(channel, n);
  const deadline = Date.now() + 10_000;
  while (Object.values(received).some((data) => data.length < COUNT) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  await new Promise((resolve) => setTimeout(resolve, 200));
  console.log(JSON.stringify(received));
  await Promise.allSettled([...stops, async () => publisher.disconnect()].map((stop) => Promise.race([stop(), new Promise((resolve) => setTimeout(resolve, 1000))])));
  process.exit(0);
}

const [url, channel] = process.argv.slice(2);
if (url !== undefined && channel !== undefined) {
  main(url, channel).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
