import type { Engine, EngineHost, Publication } from './engine.js';
import { SubscriptionIndex } from './subscription-index.js';
import { PerihelionError } from '../errors.js';

/** The default engine: one process, no set-up. Everything lives in this process's memory. */
export class MemoryEngine implements Engine {
  readonly name = 'memory';
  private host: EngineHost | null = null;
  private readonly index = new SubscriptionIndex();

  async start(host: EngineHost): Promise<void> {
    this.host = host;
  }

  async close(): Promise<void> {
    this.host = null;
  }

  async subscribe(clientId: string, pattern: string): Promise<void> {
    this.index.add(clientId, pattern);
  }

  async unsubscribe(clientId: string, pattern: string): Promise<void> {
    this.index.remove(clientId, pattern);
  }

  async removeSession(clientId: string): Promise<void> {
    this.index.removeSession(clientId);
  }

  async publish(publication: Publication): Promise<void> {
    this.running().onPublication(publication, this.index.match(publication.channel));
  }

  async sendTo(clientId: string, publication: Publication): Promise<boolean> {
    this.running().onDirect(publication, clientId);
    return true;
  }

  async subscribers(pattern: string): Promise<string[]> {
    return this.index.subscribersOf(pattern);
  }

  async subscriberCount(pattern: string): Promise<number> {
    return this.index.count(pattern);
  }

  async channels(): Promise<Map<string, number>> {
    return this.index.patterns();
  }

  private running(): EngineHost {
    if (!this.host) throw new PerihelionError('ERR_ENGINE_CLOSED', 'the memory engine is not started or already closed');
    return this.host;
  }
}
