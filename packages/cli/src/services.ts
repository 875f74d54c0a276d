/**
 * The services every `perihelion serve` answers, whatever else it runs: small /service channels
 * for trying a client against the server.
 */
import type { ChannelRule, Perihelion } from '@perihelion/server';

export const ECHO_CHANNEL = '/service/echo';

/** Anyone may call the built-in services. */
export const SERVICE_RULES: ChannelRule[] = [{ channel: ECHO_CHANNEL, publish: 'anyone' }];

/**
 * /service/echo answers the caller alone with the data it sent (a CometD remoteCall, a Faye
 * publish followed by the reply): a way to see that a client reaches the server and back.
 */
export function installServices(server: Perihelion): void {
  server.subscribe(ECHO_CHANNEL, (message) => message.data);
}
