// A plain Node script, as users run cometd-nodejs-client: `count` CometD clients of one process
// (so one cookie jar, the library's) handshake over long-polling and subscribe at once, outside
// any handshake listener. Prints "ready" once each holds its subscription (or after 10 s), then,
// once each has `expect` messages (or after 10 s more), a line of JSON: per client, its
// handshakes and the data it received. Usage: node cometd-one-jar.mjs URL CHANNEL COUNT EXPECT
import { adapt } from 'cometd-nodejs-client';
import { CometD } from 'cometd';

adapt();
const [url, channel, count, expect] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5])];
const clients = Array.from({ length: count }, () => {
  const cometd = new CometD();
  cometd.unregisterTransport('websocket');
  cometd.configure({ url, logLevel: 'warn' });
  const client = { cometd, handshakes: 0, subscribed: false, received: [] };
  cometd.addListener('/meta/handshake', (reply) => {
    if (reply.successful) client.handshakes++;
  });
  cometd.addListener('/meta/subscribe', (reply) => {
    if (reply.successful) client.subscribed = true;
  });
  return client;
});
for (const client of clients) {
  client.cometd.handshake();
  client.cometd.subscribe(channel, (message) => client.received.push(message.data));
}
const until = async (done, ms) => {
  for (const end = Date.now() + ms; !done() && Date.now() < end; ) await new Promise((resolve) => setTimeout(resolve, 20));
};
// Held a moment longer: a session refused on its next request shows only then.
await until(() => clients.every((c) => c.subscribed), 10_000);
await new Promise((resolve) => setTimeout(resolve, 1000));
console.log('ready');
await until(() => clients.every((c) => c.received.length >= expect), 10_000);
console.log(JSON.stringify(clients.map((c) => ({ handshakes: c.handshakes, received: c.received }))));
await Promise.all(clients.map((c) => new Promise((resolve) => (c.cometd.isDisconnected() ? resolve() : c.cometd.disconnect(resolve)))));
process.exit(0);
