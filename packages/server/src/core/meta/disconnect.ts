/**
 * /meta/disconnect (Bayeux §Disconnect, BAYEUX.md A35): the request holds channel and clientId;
 * the reply MUST contain channel and successful. The server SHOULD release the pending connect:
 * ending the session answers a held connect with advice `reconnect: "none"` (connect.ts).
 */
import type { Message } from '@perihelion/protocol';
import { reply, unknownClient, type Reply } from '../replies.js';
import type { ServerCore } from '../server.js';
import type { ServerSession } from '../session.js';

export async function disconnect(core: Pick<ServerCore, 'delivery'>, message: Message, session: ServerSession | null): Promise<Reply> {
  if (!session) return unknownClient(message);
  core.delivery.end(session, 'client');
  return reply(message, true);
}
