/**
 * Authentication happens once, at handshake. An authenticator receives the handshake message
 * (with its `ext`, where both the CometD and Faye clients can put a token) and the HTTP request
 * facts (headers, cookies, remote address), and returns:
 * - an Identity: the session is authenticated;
 * - null: no credentials were presented (allowed only when anonymous access is on);
 * - or throws AuthenticationError: credentials were presented and are not acceptable.
 */
import type { Message } from '@perihelion/protocol';
import type { RequestFacts } from '../core/contract.js';
import type { Identity } from './identity.js';
import { PerihelionError } from '../errors.js';

export interface HandshakeRequest {
  message: Message;
  request: RequestFacts;
}

export type Authenticator = (handshake: HandshakeRequest) => Identity | null | Promise<Identity | null>;

/** Thrown by an authenticator to refuse a handshake; `reason` reaches the client in the error. */
export class AuthenticationError extends PerihelionError {
  constructor(readonly reason: string) {
    super('ERR_AUTHENTICATION', reason);
    this.name = 'AuthenticationError';
  }
}

/**
 * An authenticator for clients that show a certificate (`tls.clientCertificates`, `tls.ca`): the
 * user is the verified certificate's common name (CN), with its fingerprint as a claim; a client
 * without a certificate is anonymous (null). A verified certificate without a CN is refused.
 */
export const authenticateByCertificate: Authenticator = ({ request }) => {
  const certificate = request.clientCertificate;
  if (certificate === undefined) return null;
  if (certificate.commonName === undefined || certificate.commonName === '') throw new AuthenticationError('the client certificate names nobody (its subject has no CN)');
  return { id: certificate.commonName, roles: [], claims: { certificate: certificate.fingerprint256, subject: certificate.subject } };
};

/** The token of a handshake: `ext.token`, else an `Authorization: Bearer` header. */
export function presentedToken(handshake: HandshakeRequest): string | null {
  const token = handshake.message.ext?.token;
  if (typeof token === 'string' && token !== '') return token;
  const header = handshake.request.headers.authorization;
  const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
  return match ? match[1]! : null;
}
