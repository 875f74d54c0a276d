/**
 * The frames of one WebSocket are processed one after another, in the order they came: a frame
 * whose handling has to wait (an asynchronous extension, a remote engine) holds the frames behind
 * it, so a client's publishes keep their order; a frame that comes while none is waiting is
 * handled at once.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, WsPeer, type Msg } from './helpers.js';

const HANDSHAKE = { channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] };

describe('WebSocket frames', () => {
  it('keep their order when one of them waits: publishes are delivered and answered in the order sent', async () => {
    const ts = await startServer();
    // Holds the publish whose data is "slow" for 150 ms; every other message passes at once.
    ts.server.addExtension({
      incoming: (message) => (message.data === 'slow' ? new Promise((resolve) => setTimeout(() => resolve(message), 150)) : message),
    });
    const peer = await WsPeer.open(ts.wsUrl);
    try {
      const hello = await peer.request(HANDSHAKE);
      const clientId = hello.clientId as string;
      assert.equal((await peer.request({ channel: '/meta/subscribe', clientId, subscription: '/order' })).successful, true);
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket', advice: { timeout: 0 } }]);
      await peer.next((m) => m.channel === '/meta/connect', 'the first connect');
      peer.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);

      // Three frames sent back to back: the first waits, the two behind it must not overtake it.
      const data = ['slow', 'fast-1', 'fast-2'];
      for (const [i, value] of data.entries()) peer.send([{ channel: '/order', clientId, data: value, id: `p${i}` }]);
      await peer.next((m) => m.id === 'p2', 'the reply to the last publish', 3000);
      await peer.next((m) => m.channel === '/order' && m.data === 'fast-2', 'the last delivery', 3000);

      const replies = peer.received.filter((m) => typeof m.id === 'string' && m.id.startsWith('p')).map((m) => m.id);
      assert.deepEqual(replies, ['p0', 'p1', 'p2'], 'publish replies in the order sent');
      // Deliveries carry data; the publish replies on the same channel do not.
      const delivered = peer.received.filter((m: Msg) => m.channel === '/order' && m.data !== undefined).map((m) => m.data);
      assert.deepEqual(delivered, data, 'deliveries in the order sent');

      // Nothing waits any more: a frame is answered on its own.
      assert.equal((await peer.request({ channel: '/order', clientId, data: 'after' })).successful, true);
    } finally {
      await peer.close();
      await ts.close();
    }
  });
});
