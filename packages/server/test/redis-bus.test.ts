/** The Redis bus codec, tested with bytes: no Redis needed. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BusFormatError, broadcastHeader, decode, encode, type BusMessage } from '../src/engine/redis-bus.js';

const payload = '{"channel":"/chat/room","data":{"text":"hi \\"there\\"\\n"},"ext":{"position":{"epoch":"k3j9","offset":7}}}';

const EVERY_KIND: BusMessage[] = [
  { kind: 'broadcast', origin: '3f9c0a', tag: '12', channel: '/chat/room', position: { epoch: 'k3j9', offset: 7 }, payload },
  { kind: 'broadcast', origin: '3f9c0a', tag: '13', channel: '/ticks/ünïcode "quoted"', position: null, payload: '{"channel":"/ticks/ünïcode \\"quoted\\"","data":1}' },
  { kind: 'direct', clientId: 'abc123', payload: '{"channel":"/private/note","data":"for you"}' },
  { kind: 'fence', fence: '42' },
  { kind: 'end', clientId: 'abc123' },
  { kind: 'broadcast', origin: '3f9c0a', tag: '14', channel: '/chat/room', position: { epoch: 'k3j9', offset: 8 }, exclude: 'publisher1', payload },
  { kind: 'broadcast', origin: '3f9c0a', tag: '15', channel: '/chat/room', position: null, exclude: 'publisher1', payload: '{"channel":"/chat/room","data":2}' },
  { kind: 'census', origin: '3f9c0a', request: '7' },
  { kind: 'answer', request: '7', node: '8e1d', payload: '[{"clientId":"abc123","user":null}]' },
  { kind: 'node', from: '8e1d', payload: '{"t":"rep","id":"x-1","replies":["{}"]}' },
  { kind: 'mail', key: 'perihelion:node:8e1d:mail:77aa:3' },
];

function rejects(text: string, reason: RegExp): void {
  const decoded = decode(text);
  assert.ok(decoded instanceof BusFormatError, `${JSON.stringify(text)} was accepted as ${JSON.stringify(decoded)}`);
  assert.match(decoded.message, reason);
}

describe('redis bus codec', () => {
  it('reads back every kind of message it writes', () => {
    for (const message of EVERY_KIND) assert.deepEqual(decode(encode(message)), message);
  });

  it('keeps the payload byte for byte, a newline in it included: only the first newline ends the header', () => {
    const odd = '{"channel":"/a",\n"data":"two\nlines"}';
    const decoded = decode(encode({ kind: 'direct', clientId: 'c', payload: odd }));
    assert.ok(!(decoded instanceof Error));
    assert.equal(decoded.kind === 'direct' && decoded.payload, odd);
  });

  it("writes a broadcast as the publish script does: the position's JSON between the halves of the header", () => {
    const message = EVERY_KIND[0] as Extract<BusMessage, { kind: 'broadcast' }>;
    const [before, after] = broadcastHeader(message.origin, message.tag, message.channel);
    // What the Lua script concatenates: cjson's string, then the offset as an integer.
    const scripted = `${before}{"epoch":"k3j9","offset":7}${after}${message.payload}`;
    assert.equal(scripted, encode(message));
    assert.deepEqual(decode(scripted), message);
    assert.ok(!after.slice(0, -1).includes('\n') && after.endsWith('\n'), 'the header ends with the second half');
  });

  it('writes the excluded session of a broadcast after the position, as the publish script leaves it', () => {
    const message = EVERY_KIND[5] as Extract<BusMessage, { kind: 'broadcast' }>;
    const [before, after] = broadcastHeader(message.origin, message.tag, message.channel, message.exclude);
    const scripted = `${before}{"epoch":"k3j9","offset":8}${after}${message.payload}`;
    assert.equal(scripted, encode(message));
    assert.deepEqual(decode(scripted), message);
  });

  it('checks a census and its answers', () => {
    rejects('["c","n"]\n', /census header needs a node and a request id/);
    rejects('["c","n","1"]\n{}', /census carries no payload/);
    rejects('["a","1"]\n[]', /answer header needs a request id and a node/);
    rejects('["a","1","n"]\n{"clientId":"x"}', /not a JSON array/);
    rejects('["n"]\n{}', /node message header needs exactly one node id/);
    rejects('["m"]\n', /mail header needs exactly one key/);
    rejects('["m",""]\n', /mail header needs exactly one key/);
    rejects('["m","k"]\n{}', /mail message carries no payload/);
  });

  it('says what is wrong with a malformed message instead of throwing', () => {
    rejects('', /no newline/);
    rejects('["b","n","1","/a"]', /no newline/);
    rejects('["b","n","1","/a"\n{}', /not JSON/);
    rejects('{"kind":"b"}\n{}', /not a non-empty array/);
    rejects('[]\n', /not a non-empty array/);
    rejects('["q","x"]\n', /unknown message kind "q"/);
    rejects('[7]\n', /unknown message kind 7/);
  });

  it('checks every field of a broadcast', () => {
    rejects('["b","n","1"]\n{"channel":"/a"}', /node, a tag and a channel/);
    rejects('["b","n",1,"/a"]\n{"channel":"/a"}', /node, a tag and a channel/);
    rejects('["b","","1","/a"]\n{"channel":"/a"}', /node, a tag and a channel/);
    rejects('["b","n","1","/a","e",3]\n{"channel":"/a"}', /position is malformed|at most 5/);
    rejects('["b","n","1","/a",{"epoch":"e","offset":3},1]\n{"channel":"/a"}', /excluded session must be a non-empty string/);
    rejects('["b","n","1","/a",null,""]\n{"channel":"/a"}', /excluded session must be a non-empty string/);
    rejects('["b","n","1","/a",null]\n{"channel":"/a"}', /position is malformed/);
    rejects('["b","n","1","/a",null,"c",3]\n{"channel":"/a"}', /at most 6/);
    rejects('["b","n","1","/a",{"epoch":"e","offset":-1}]\n{"channel":"/a"}', /position is malformed/);
    rejects('["b","n","1","/a",{"epoch":"e","offset":1.5}]\n{"channel":"/a"}', /position is malformed/);
    rejects('["b","n","1","/a",{"epoch":3,"offset":1}]\n{"channel":"/a"}', /position is malformed/);
    rejects('["b","n","1","/a",null]\n{"channel":"/a"}', /position is malformed/);
    rejects('["b","n","1","/a"]\n', /payload is not a JSON object/);
    rejects('["b","n","1","/a"]\n{"channel":"/a"', /payload is not a JSON object/);
  });

  it('checks direct messages, fences and session ends', () => {
    rejects('["d"]\n{}', /exactly one clientId/);
    rejects('["d","c","x"]\n{}', /exactly one clientId/);
    rejects('["d",5]\n{}', /exactly one clientId/);
    rejects('["d","c"]\n', /payload is not a JSON object/);
    rejects('["f"]\n', /exactly one fence id/);
    rejects('["f",42]\n', /exactly one fence id/);
    rejects('["f","42"]\n{}', /carries no payload/);
    rejects('["x",""]\n', /exactly one clientId/);
    rejects('["x","c"]\n{}', /carries no payload/);
  });

  it('never throws, whatever the bytes: every cut of every message and random noise give a message or an error', () => {
    let seed = 14;
    const random = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    const inputs: string[] = [];
    for (const message of EVERY_KIND) {
      const text = encode(message);
      for (let i = 0; i <= text.length; i++) inputs.push(text.slice(0, i), text.slice(i));
    }
    const alphabet = '[]{}",:\n\\bdfx0123456789-.eE ntrul';
    for (let n = 0; n < 2000; n++) inputs.push(Array.from({ length: random(40) }, () => alphabet[random(alphabet.length)]).join(''));
    for (const text of inputs) {
      const decoded = decode(text);
      assert.ok(decoded instanceof BusFormatError || typeof decoded.kind === 'string');
    }
  });
});
