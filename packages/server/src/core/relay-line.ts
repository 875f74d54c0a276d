/**
 * A push line whose writes are handed on rather than written to a socket: to a local client's
 * handlers in this process (api/local-client.ts), or to the node that holds the client's real line
 * (core/forwarding.ts). It is never congested here (whoever holds the real line bounds its own
 * buffer) and it closes once, telling whoever asked.
 */
import type { LineWatcher, PushConnection, Transport } from './contract.js';
import type { DisconnectReason } from './events.js';
import { LineWatchers } from './line-watchers.js';

export abstract class RelayLine implements PushConnection {
  readonly congested = false;
  private isOpen = true;
  private readonly closeCallbacks: Array<() => void> = [];
  private readonly watchers = new LineWatchers();

  constructor(readonly transport: Transport) {}

  get open(): boolean {
    return this.isOpen;
  }

  /** Hands the serialised messages on (called only while open). */
  protected abstract relay(serialised: string[]): void;

  abstract sessionEnded(reason?: DisconnectReason): void;

  send(serialised: readonly string[]): void {
    if (this.isOpen) this.relay([...serialised]);
  }

  sendOne(serialised: string): void {
    this.send([serialised]);
  }

  onClose(callback: () => void): void {
    if (this.isOpen) this.closeCallbacks.push(callback);
    else callback();
  }

  /** The one session bound to this line, if there is exactly one. */
  protected soleWatcher(): LineWatcher | null {
    return this.watchers.sole();
  }

  watch(watcher: LineWatcher): void {
    // Never congested here, so never drained: only the close is told.
    if (this.watchers.add(watcher)) this.onClose(() => this.watchers.closed(this));
  }

  close(): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    for (const callback of this.closeCallbacks.splice(0)) callback();
  }
}
