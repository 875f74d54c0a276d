/**
 * Preloaded by `npm test` into the test runner and every test file's process: makes stdout and
 * stderr blocking when they are pipes. Under `--test-force-exit` each test file's process streams
 * its results to the runner through a pipe and is ended by process.exit() once its tests are
 * done; writes to a pipe are asynchronous on Linux, so the last results could be cut off, and the
 * runner then counted fewer tests than ran, and would have missed a failure among them
 * (nodejs/node#64833). Blocking writes are all written before the exit.
 */
for (const stream of [process.stdout, process.stderr]) {
  const handle = /** @type {{ setBlocking?: (blocking: boolean) => void } | undefined} */ (stream._handle);
  handle?.setBlocking?.(true);
}
