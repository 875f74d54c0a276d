/**
 * Extensions: hooks that see every message in and out, handshakes and connects included, in the
 * order they were added (cf. faye extensible.js, cometd Extension.js). Each may change a
 * message or drop it by returning null; a dropped message goes no further.
 */
import type { Message } from '@perihelion/protocol';

export interface Extension {
  /** Sees every message before it is sent; return null to drop it. */
  outgoing?(message: Message): Message | null;
  /** Sees every message from the server before the client acts on it; return null to drop it. */
  incoming?(message: Message): Message | null;
}

/** Passes `message` through every extension's `hook`; null once one of them dropped it. */
export function runExtensions(extensions: readonly Extension[], hook: 'incoming' | 'outgoing', message: Message): Message | null {
  let out: Message | null = message;
  for (const extension of extensions) {
    if (out === null) break;
    if (extension[hook]) out = extension[hook]!(out);
  }
  return out;
}

/** Adds `extension` to `extensions`; returns a function that removes it. */
export function addExtension(extensions: Extension[], extension: Extension): () => void {
  extensions.push(extension);
  return () => {
    const at = extensions.indexOf(extension);
    if (at !== -1) extensions.splice(at, 1);
  };
}
