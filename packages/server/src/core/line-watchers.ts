/**
 * The sessions bound to a push line, told of its close and drain (contract.ts, LineWatcher). Every
 * kind of line keeps one: a WebSocket, a stream, a relay line.
 */
import type { LineWatcher, PushConnection } from './contract.js';

export class LineWatchers {
  private readonly watchers: LineWatcher[] = [];

  /** Adds `watcher` (once however often it is given); true for the first one, when the line should start reporting. */
  add(watcher: LineWatcher): boolean {
    if (this.watchers.includes(watcher)) return false;
    this.watchers.push(watcher);
    return this.watchers.length === 1;
  }

  /** The line closed: each watcher is told once, and forgotten. */
  closed(line: PushConnection): void {
    for (const watcher of this.watchers.splice(0)) watcher.lineClosed(line);
  }

  /** The one watcher, when there is exactly one (a line's writes can then be told apart by whose they are). */
  sole(): LineWatcher | null {
    return this.watchers.length === 1 ? this.watchers[0]! : null;
  }

  /** The line drained: each watcher is told. */
  drained(line: PushConnection): void {
    for (const watcher of this.watchers) watcher.lineDrained(line);
  }
}
