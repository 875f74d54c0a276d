// The long-polling subscribers' HTTP line: one request at a time on a keep-alive connection, and
// the keep-alive race (the server closes an idle connection as a request leaves on it) survived
// by sending the request once more on a new connection.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { HttpLine } from '../clients.mjs';

/** A server that answers each request with its connection's number and request count, and closes a connection (no answer) on its `closeOn`-th request. */
function server(closeOn) {
  let connections = 0;
  const srv = net.createServer((socket) => {
    const number = ++connections;
    let requests = 0;
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      let end;
      while ((end = buffered.indexOf('\r\n\r\n')) !== -1) {
        const length = Number(/content-length: (\d+)/i.exec(buffered.slice(0, end))?.[1] ?? 0);
        if (buffered.length < end + 4 + length) return;
        buffered = buffered.slice(end + 4 + length);
        requests++;
        if (number === 1 && requests === closeOn) return socket.destroy();
        const body = `${number}.${requests}`;
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      }
    });
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

describe('HttpLine (the long-polling subscribers)', () => {
  const servers = [];
  after(() => servers.forEach((s) => s.close()));

  it('sends a request again on a new connection when a reused one closes before any answer', async () => {
    const srv = await server(2);
    servers.push(srv);
    const line = new HttpLine('127.0.0.1', srv.address().port);
    const first = await line.request({ path: '/', body: '[]', timeoutMs: 2000 });
    assert.equal(first.text, '1.1');
    const second = await line.request({ path: '/', body: '[]', timeoutMs: 2000 });
    assert.equal(second.text, '2.1', 'answered on a second connection');
    line.close();
  });

  it('fails a request whose new connection closes before any answer (sent once more at most)', async () => {
    const srv = await server(1);
    servers.push(srv);
    const line = new HttpLine('127.0.0.1', srv.address().port);
    await assert.rejects(line.request({ path: '/', body: '[]', timeoutMs: 2000 }), /connection closed by the server/);
    line.close();
  });
});
