/**
 * The sessions bound to a push line, told of its close and drain (contract.ts, LineWatcher). Every
 * kind of line keeps one: a WebSocket, a stream, a relay line.
 */
import type { LineWatcher, PushConnection } from './contract.js';

export class LineWatchers {
  /**
   * The first watcher, and the others when there are any: a line usually serves one session, and
   * an array per line would cost every idle connection its bytes.
   */
  private first: LineWatcher | null = null;
  private others: LineWatcher[] | null = null;

  /** Adds `watcher` (once however often it is given); true for the first one, when the line should start reporting. */
  add(watcher: LineWatcher): boolean {
    if (this.first === null) {
      this.first = watcher;
      return true;
    }
    if (this.first === watcher || this.others?.includes(watcher)) return false;
    (this.others ??= []).push(watcher);
    return false;
  }

  /** The line closed: each watcher is told once, and forgotten. */
  closed(line: PushConnection): void {
    const { first, others } = this;
    this.first = null;
    this.others = null;
    first?.lineClosed(line);
    if (others !== null) for (const watcher of others) watcher.lineClosed(line);
  }

  /** The one watcher, when there is exactly one (a line's writes can then be told apart by whose they are). */
  sole(): LineWatcher | null {
    return this.others === null ? this.first : null;
  }

  /** The line drained: each watcher is told. */
  drained(line: PushConnection): void {
    this.first?.lineDrained(line);
    if (this.others !== null) for (const watcher of this.others) watcher.lineDrained(line);
  }
}
