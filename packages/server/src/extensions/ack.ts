/**
 * The CometD `ack` extension, server side: no loss, no duplicate and no reordering within a
 * session whose client registers CometD's AckExtension (BAYEUX.md pitfall 15; CometD docs
 * "extensions_acknowledge").
 * A built-in rather than a pipeline hook: it keeps written messages per session and puts them
 * back in the session's queue, so the core calls it where messages are written and connects answered.
 *
 * The wire contract: the handshake carries `ext.ack: true` and is answered with
 * `ext.ack: {enabled: true, batch: n}`. Every successful /meta/connect reply carries
 * `ext.ack: <batch>`, closing a batch: all messages written to the client since the previous
 * reply. Such a session's messages travel only in connect replies, on long-polling and on a
 * WebSocket alike (ServerSession.deliversInConnectReplies), so a batch is exactly what one reply
 * carried. The client's next /meta/connect carries `ext.ack: <the last batch it received>`.
 * Messages of closed batches the client did not acknowledge were lost on the way (a response cut
 * in flight, a socket that died) and are written again. Messages of the batch still open are in
 * flight, never resent.
 */
export class Acknowledgement {
  /** The last batch closed by a connect reply. */
  private batch = 0;
  /** Messages written and not yet acknowledged, with the batch each belongs to, oldest first. */
  private unacked: Array<{ batch: number; payload: string }> = [];
  /** Unacknowledged messages forgotten because the window was full. */
  dropped = 0;

  /** `limit`: most unacknowledged messages remembered (the session's queue size). */
  constructor(private readonly limit: number) {}

  /** The handshake reply's `ext.ack`. */
  get handshakeReply(): { enabled: true; batch: number } {
    return { enabled: true, batch: this.batch };
  }

  /** Remembers messages just written to the client; they belong to the batch the next reply closes. */
  written(payloads: readonly string[]): void {
    const batch = this.batch + 1;
    for (const payload of payloads) this.unacked.push({ batch, payload });
    const excess = this.unacked.length - this.limit;
    if (excess > 0) {
      this.unacked.splice(0, excess);
      this.dropped += excess;
    }
  }

  /** Closes the open batch; its number goes in the connect reply's `ext.ack`. */
  close(): number {
    return ++this.batch;
  }

  /**
   * Takes the client's acknowledgement of every batch up to `received`; returns the messages of
   * closed batches it did not receive, oldest first, to be written again.
   */
  acknowledge(received: number): string[] {
    const resend: string[] = [];
    const kept: Array<{ batch: number; payload: string }> = [];
    for (const entry of this.unacked) {
      if (entry.batch <= received) continue;
      if (entry.batch <= this.batch) resend.push(entry.payload);
      else kept.push(entry);
    }
    this.unacked = kept;
    return resend;
  }

  get pending(): number {
    return this.unacked.length;
  }
}
