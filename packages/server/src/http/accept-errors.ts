/**
 * Failures to accept a connection on a listening socket, reported instead of crashing.
 *
 * node:net emits 'error' on the server for every connection it could not accept, and an 'error'
 * with no listener kills the process. The usual cause is the process's limit of open descriptors
 * (EMFILE; ENFILE for the system's): every connection is one, and a server holding thousands of
 * them meets `ulimit -n` (often 1024). libuv then accepts and closes the newcomer at once, so its
 * client sees its connection end; the connections already open are served as before. One line is
 * reported at the first failure, then at most one per REPORT_EVERY_MS with how many there were,
 * so that a flood of refused connections does not flood the log too.
 */
import type { Server } from 'node:net';
import { REPORT_EVERY_MS, ReportThrottle } from '../report-throttle.js';

export { REPORT_EVERY_MS };

/** Reports `server`'s accept failures through `report` (bounded as above); returns the error listener. */
export function reportAcceptErrors(server: Server, report: (error: Error) => void, now: () => number = Date.now): (error: NodeJS.ErrnoException) => void {
  const throttle = new ReportThrottle(REPORT_EVERY_MS, now);
  const listener = (error: NodeJS.ErrnoException): void => {
    const count = throttle.count();
    if (count > 0) report(acceptError(error, count));
  };
  server.on('error', listener);
  return listener;
}

function acceptError(error: NodeJS.ErrnoException, count: number): Error {
  const times = count > 1 ? `${count} connections were` : 'a connection was';
  const why =
    error.code === 'EMFILE' || error.code === 'ENFILE'
      ? `this process has as many open files as it may (${error.code}: every connection is one); raise the limit (ulimit -n, LimitNOFILE in systemd) or spread the clients over more processes (--workers, cluster mode)`
      : `${error.code ?? 'error'}: ${error.message}`;
  return Object.assign(new Error(`${times} refused since the last report: ${why}; the connections already open are still served`), { code: error.code, cause: error });
}
