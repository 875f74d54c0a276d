/**
 * HTTP streaming (connection type `http-streaming`): `GET <mount>/<clientId>` with
 * `Accept: application/x-ndjson`, answered with a chunked response that stays open; every line is
 * one JSON array of messages. For clients that read a `fetch` body as a stream.
 *
 * The first line is `[]`, sent at once: a client that does not receive it within a few seconds is
 * behind an intermediary that buffers responses and should fall back to long-polling. Idle lines
 * get `[]` again as the heartbeat; clients skip empty arrays.
 */
import { ndjsonLine } from '@perihelion/protocol';
import type { Framer } from './stream.js';

export const ndjsonFramer: Framer = {
  transport: 'http-streaming',
  contentType: 'application/x-ndjson; charset=utf-8',
  opening: () => ndjsonLine('[]'),
  // An empty array followed by spaces: still one parseable line.
  padding: (bytes) => `[]${' '.repeat(Math.max(0, bytes - 3))}\n`,
  batch: (json) => ndjsonLine(json),
  heartbeat: () => ndjsonLine('[]'),
  farewell: (json) => ndjsonLine(json),
};
