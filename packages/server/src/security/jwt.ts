/**
 * Signed tokens (JWT, via `jose`): the built-in authenticator, and subscription tokens that open
 * one private channel.
 *
 * Keys: an HMAC secret (HS256/384/512; from `PERIHELION_JWT_SECRET` in the CLI), a public key in
 * PEM (RS*, ES*, PS*, EdDSA), or a JWKS document (read from a file by the CLI). Expiry (`exp`) and
 * not-before (`nbf`) are always honoured; `issuer` and `audience` are checked when configured.
 */
import { createLocalJWKSet, importSPKI, jwtVerify, type JWTPayload, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import { PerihelionError } from '../errors.js';
import { AuthenticationError, presentedToken, type Authenticator } from './authenticate.js';
import type { Identity } from './identity.js';

export interface JwtOptions {
  /** HMAC secret (at least 32 characters). */
  secret?: string;
  /** Public key in PEM (SPKI) form, with `algorithm`. */
  publicKey?: string;
  /** Algorithm of `publicKey`. Default: RS256. */
  algorithm?: string;
  /** A JSON Web Key Set (the parsed document). */
  jwks?: JSONWebKeySet;
  /** Required `iss`, when set. */
  issuer?: string;
  /** Required `aud`, when set. */
  audience?: string;
}

type Key = Uint8Array | Awaited<ReturnType<typeof importSPKI>> | JWTVerifyGetKey;

export class JwtVerifier {
  private readonly key: Promise<Key>;
  private readonly algorithms: string[];

  constructor(private readonly options: JwtOptions) {
    const sources = [options.secret, options.publicKey, options.jwks].filter((s) => s !== undefined).length;
    if (sources !== 1) {
      throw new PerihelionError('ERR_INVALID_OPTION', 'option "jwt" needs exactly one of "secret", "publicKey" or "jwks"');
    }
    if (options.secret !== undefined) {
      if (typeof options.secret !== 'string' || options.secret.length < 32) {
        throw new PerihelionError('ERR_INVALID_OPTION', 'option "jwt.secret" must be a string of at least 32 characters (HS256 needs 256 bits)');
      }
      this.key = Promise.resolve(new TextEncoder().encode(options.secret));
      this.algorithms = ['HS256', 'HS384', 'HS512'];
    } else if (options.publicKey !== undefined) {
      const algorithm = options.algorithm ?? 'RS256';
      this.key = importSPKI(options.publicKey, algorithm);
      // Surfaces a bad key at first use as a refusal, never as an unhandled rejection.
      this.key.catch(() => {});
      this.algorithms = [algorithm];
    } else {
      this.key = Promise.resolve(createLocalJWKSet(options.jwks!));
      this.algorithms = [];
    }
  }

  /** Verifies a token; throws AuthenticationError with a reason a client can act on. */
  async verify(token: string): Promise<JWTPayload> {
    let key: Key;
    try {
      key = await this.key;
    } catch (error) {
      throw new AuthenticationError(`the server's JWT key is unusable (${(error as Error).message})`);
    }
    try {
      const options = {
        ...(this.algorithms.length > 0 ? { algorithms: this.algorithms } : {}),
        ...(this.options.issuer !== undefined ? { issuer: this.options.issuer } : {}),
        ...(this.options.audience !== undefined ? { audience: this.options.audience } : {}),
      };
      const { payload } = typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options);
      return payload;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'ERR_JWT_EXPIRED') throw new AuthenticationError('token expired');
      if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') throw new AuthenticationError(`token claim rejected (${(error as Error).message})`);
      throw new AuthenticationError('invalid token');
    }
  }
}

/** The identity a verified token stands for. */
export function identityFromClaims(claims: JWTPayload): Identity {
  if (typeof claims.sub !== 'string' || claims.sub === '') throw new AuthenticationError('token has no "sub" claim');
  // A subscription token opens channels; it is not a login.
  if (claims.channel !== undefined || claims.channels !== undefined) throw new AuthenticationError('a subscription token cannot be used to handshake');
  const roles = Array.isArray(claims.roles) ? claims.roles.filter((r): r is string => typeof r === 'string') : typeof claims.role === 'string' ? [claims.role] : [];
  return { id: claims.sub, roles, claims: { ...claims }, ...(typeof claims.exp === 'number' ? { expiresAt: claims.exp * 1000 } : {}) };
}

/** Authenticates handshakes that carry a JWT in `ext.token` (or an Authorization: Bearer header). */
export function jwtAuthenticator(options: JwtOptions | JwtVerifier): Authenticator {
  const verifier = options instanceof JwtVerifier ? options : new JwtVerifier(options);
  return async (handshake) => {
    const token = presentedToken(handshake);
    if (token === null) return null;
    return identityFromClaims(await verifier.verify(token));
  };
}
