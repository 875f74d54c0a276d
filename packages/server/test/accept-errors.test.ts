/** Connections a listening server could not accept are reported, bounded, and never crash it. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { REPORT_EVERY_MS, reportAcceptErrors } from '../src/http/accept-errors.js';

const emfile = (): NodeJS.ErrnoException => Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' });

describe('accept errors', () => {
  it('reports the first failure at once, then at most one line per period with the count, and the server survives each', () => {
    const server = createServer();
    const reports: Error[] = [];
    let now = 1_000;
    reportAcceptErrors(server, (error) => reports.push(error), () => now);
    // Without a listener, each of these would throw out of emit (and kill the process).
    server.emit('error', emfile());
    for (let i = 0; i < 5; i++) server.emit('error', emfile());
    assert.equal(reports.length, 1);
    assert.match(reports[0]!.message, /^a connection was refused since the last report: this process has as many open files as it may \(EMFILE/);
    assert.match(reports[0]!.message, /ulimit -n/);
    assert.equal((reports[0] as NodeJS.ErrnoException).code, 'EMFILE');
    now += REPORT_EVERY_MS;
    server.emit('error', emfile());
    assert.equal(reports.length, 2);
    assert.match(reports[1]!.message, /^6 connections were refused since the last report/);
    server.emit('error', Object.assign(new Error('accept ENOBUFS'), { code: 'ENOBUFS' }));
    now += REPORT_EVERY_MS;
    server.emit('error', Object.assign(new Error('accept ENOBUFS'), { code: 'ENOBUFS' }));
    assert.match(reports[2]!.message, /2 connections were refused since the last report: ENOBUFS: accept ENOBUFS; the connections already open are still served/);
  });
});
