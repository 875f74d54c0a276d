/**
 * A WebSocket that brings no Bayeux message for longer than a session can live without one is
 * closed (1008): it carries no live session and would hold a descriptor for nothing. One whose
 * session keeps connecting stays open however long it lives.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, waitFor, WsPeer, type Msg } from './helpers.js';

describe('idle WebSockets', () => {
  it('closes a socket that says nothing (and one whose session ended) past timeout + interval + maxInterval + 5 s; a live session keeps its socket', { timeout: 30_000 }, async () => {
    // The limit here: 300 + 0 + 1 000 ms + the 5 s margin.
    const ts = await startServer({ timeout: 300, maxInterval: 1000 });
    const peers: WsPeer[] = [];
    let chatter: NodeJS.Timeout | undefined;
    try {
      const silent = await WsPeer.open(ts.wsUrl);
      peers.push(silent);

      // A live session: it connects again each time its held connect is answered.
      const live = await WsPeer.open(ts.wsUrl);
      peers.push(live);
      const hello = await live.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
      assert.equal(hello.successful, true);
      const clientId = hello.clientId as string;
      let connects = 0;
      live.ws.on('message', (data) => {
        const replies = JSON.parse(String(data)) as Msg[];
        if (replies.some((m) => m.channel === '/meta/connect' && m.successful === true) && live.open) {
          connects++;
          live.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);
        }
      });
      live.send([{ channel: '/meta/connect', clientId, connectionType: 'websocket' }]);

      // A session that disconnects and leaves its socket open.
      const left = await WsPeer.open(ts.wsUrl);
      peers.push(left);
      const leftHello = await left.request({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['websocket'] });
      assert.equal((await left.request({ channel: '/meta/disconnect', clientId: leftHello.clientId })).successful, true);

      // A socket with no session that sends frames, garbage or empty batches, every second.
      const chatty = await WsPeer.open(ts.wsUrl);
      peers.push(chatty);
      chatter = setInterval(() => {
        if (chatty.open) chatty.send(Math.random() < 0.5 ? 'garbage' : '[]');
      }, 1000);

      await new Promise((resolve) => setTimeout(resolve, 4_000));
      assert.ok(silent.open && left.open, 'nothing is closed before the limit');
      // Closed: the close handshake done, not only begun (a socket is no longer open while closing).
      await waitFor(() => silent.closeCode !== null && left.closeCode !== null && chatty.closeCode !== null, 8_000, 'the idle sockets to be closed');
      assert.equal(silent.closeCode, 1008);
      assert.equal(left.closeCode, 1008);
      assert.equal(chatty.closeCode, 1008, 'frames that carry no session do not keep a socket');
      assert.ok(live.open, 'the live session kept its socket');
      assert.ok(connects > 15, `the live session kept connecting (${connects} connects)`);
      // And it is still served.
      await live.request({ channel: '/meta/subscribe', clientId, subscription: '/idle/check' });
      await ts.server.publish('/idle/check', 'still here');
      await live.next((m) => m.channel === '/idle/check', 'the publish');
    } finally {
      clearInterval(chatter);
      for (const peer of peers) await peer.close().catch(() => {});
      await ts.close();
    }
  });
});
