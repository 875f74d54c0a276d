/** The parts of the Faye client (npm `faye` 1.4, which ships no types) that the tests use. */
declare module 'faye' {
  namespace Faye {
    interface Message {
      channel: string;
      id?: string;
      clientId?: string;
      data?: unknown;
      successful?: boolean;
      error?: string;
      subscription?: string | string[];
      advice?: { reconnect?: string; interval?: number; timeout?: number };
      ext?: Record<string, unknown>;
      [field: string]: unknown;
    }

    /** Client extensions call `next` with the message (possibly changed), or null to drop it. */
    interface Extension {
      incoming?(message: Message, next: (message: Message | null) => void): void;
      outgoing?(message: Message, next: (message: Message | null) => void): void;
    }

    /** Settles when the server acknowledged the subscription. */
    interface Subscription extends PromiseLike<void> {
      withChannel(listener: (channel: string, data: unknown) => void): Subscription;
      cancel(): void;
      unsubscribe(): void;
    }

    /** Settles when the server acknowledged the publish; rejects with the Bayeux error. */
    interface Publication extends PromiseLike<void> {}

    interface ClientOptions {
      /** Seconds the server may hold a /meta/connect. */
      timeout?: number;
      /** Seconds between retries of a failed message. */
      retry?: number;
      interval?: number;
      endpoints?: Record<string, string>;
    }

    /** Transports a Node client can turn off with `disable`. */
    type Feature = 'websocket' | 'long-polling' | 'in-process' | 'autodisconnect';

    class Client {
      constructor(endpoint: string, options?: ClientOptions);
      /** Handshakes if needed; calls back once the client is connected. */
      connect(callback?: () => void): void;
      disable(feature: Feature): void;
      setHeader(name: string, value: string): void;
      addExtension(extension: Extension): void;
      removeExtension(extension: Extension): void;
      subscribe(channel: string, listener?: (data: unknown) => void): Subscription;
      unsubscribe(channel: string, subscription?: Subscription): void;
      publish(channel: string, data: unknown, options?: { attempts?: number; deadline?: number }): Publication;
      /** Undefined when the client was not connected. */
      disconnect(): Publication | undefined;
    }

    const VERSION: string;
  }

  export default Faye;
}
