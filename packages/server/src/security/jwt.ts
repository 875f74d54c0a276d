/**
 * Signed tokens (JWT, via `jose`): the built-in authenticator, and subscription tokens that open
 * one private channel.
 *
 * Keys: an HMAC secret (HS256/384/512; from `PERIHELION_JWT_SECRET` in the CLI), a public key in
 * PEM (RS*, ES*, PS*, EdDSA), or a JWKS document (read from a file by the CLI). Expiry (`exp`) and
 * not-before (`nbf`) are always honoured; `issuer` and `audience` are checked when configured.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
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

/**
 * The algorithms of a public key, and the key each takes (jose's JWS table: an RSA key of 2048
 * bits or more for RS* and PS*, an EC key on the named curve for ES*, an Ed25519 key for EdDSA).
 */
const PUBLIC_KEY_ALGORITHMS: Record<string, { type: string; curve?: string; name: string }> = {
  RS256: { type: 'rsa', name: 'an RSA key' },
  RS384: { type: 'rsa', name: 'an RSA key' },
  RS512: { type: 'rsa', name: 'an RSA key' },
  PS256: { type: 'rsa', name: 'an RSA key' },
  PS384: { type: 'rsa', name: 'an RSA key' },
  PS512: { type: 'rsa', name: 'an RSA key' },
  ES256: { type: 'ec', curve: 'prime256v1', name: 'an EC key on P-256' },
  ES384: { type: 'ec', curve: 'secp384r1', name: 'an EC key on P-384' },
  ES512: { type: 'ec', curve: 'secp521r1', name: 'an EC key on P-521' },
  EdDSA: { type: 'ed25519', name: 'an Ed25519 key' },
  Ed25519: { type: 'ed25519', name: 'an Ed25519 key' },
};

/** node:crypto's names of the curves, as JOSE names them. */
const CURVE_NAMES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' };

function invalidKey(message: string, cause?: unknown): never {
  throw new PerihelionError('ERR_INVALID_OPTION', message, cause === undefined ? undefined : { cause });
}

/**
 * Checks a PEM public key and its algorithm at start, as the secret and a JWKS are checked:
 * a key that cannot verify anything must stop the server rather than refuse every token later.
 * Synchronous, with node:crypto, so that `createServer` throws.
 */
function checkPublicKey(publicKey: unknown, algorithm: unknown): void {
  if (typeof algorithm !== 'string' || !Object.hasOwn(PUBLIC_KEY_ALGORITHMS, algorithm)) {
    const hmac = typeof algorithm === 'string' && /^HS(256|384|512)$/.test(algorithm) ? ' (an HMAC algorithm takes a secret, "jwt.secret", not a public key)' : '';
    invalidKey(`option "jwt.algorithm" must be one of ${Object.keys(PUBLIC_KEY_ALGORITHMS).join(', ')}, got ${JSON.stringify(algorithm)}${hmac}`);
  }
  if (typeof publicKey !== 'string') invalidKey('option "jwt.publicKey" must be a string: a public key in PEM form ("-----BEGIN PUBLIC KEY-----")');
  const pem = publicKey.trim();
  const kind = /^-----BEGIN ([A-Z0-9 ]+)-----/.exec(pem)?.[1];
  if (kind === undefined) invalidKey('option "jwt.publicKey" is not a PEM public key: it does not start with "-----BEGIN PUBLIC KEY-----"');
  if (kind === 'CERTIFICATE') invalidKey('option "jwt.publicKey" is a certificate; give its public key (openssl x509 -pubkey -noout -in cert.pem)');
  if (kind === 'RSA PUBLIC KEY') invalidKey('option "jwt.publicKey" is an RSA key in PKCS#1 form; give it as SPKI, "-----BEGIN PUBLIC KEY-----" (openssl rsa -RSAPublicKey_in -in key.pem -pubout)');
  if (kind.endsWith('PRIVATE KEY')) invalidKey('option "jwt.publicKey" is a private key; give the public key (openssl pkey -in key.pem -pubout), and keep the private key to the token issuer');
  if (kind !== 'PUBLIC KEY') invalidKey(`option "jwt.publicKey" is a PEM "${kind}", not a public key ("-----BEGIN PUBLIC KEY-----")`);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (error) {
    invalidKey(`option "jwt.publicKey" is not a usable public key (${(error as Error).message})`, error);
  }
  const problem = fitProblem(key, algorithm);
  if (problem !== null) invalidKey(`option "jwt.publicKey" is ${problem}`);
}

/**
 * Why `key` cannot verify tokens signed with `algorithm` ("an EC key on P-256, and algorithm
 * RS256 takes an RSA key"), or null when it can. `algorithm` is one of PUBLIC_KEY_ALGORITHMS.
 */
function fitProblem(key: KeyObject, algorithm: string, algorithmName = `algorithm ${algorithm} ("jwt.algorithm")`): string | null {
  const wanted = PUBLIC_KEY_ALGORITHMS[algorithm]!;
  const details = key.asymmetricKeyDetails ?? {};
  const fits = key.asymmetricKeyType === wanted.type && (wanted.curve === undefined || details.namedCurve === wanted.curve);
  if (!fits) {
    const curve = details.namedCurve === undefined ? 'an unknown curve' : (CURVE_NAMES[details.namedCurve] ?? details.namedCurve);
    const got = key.asymmetricKeyType === 'ec' ? `an EC key on ${curve}` : key.asymmetricKeyType === 'rsa' ? 'an RSA key' : `a key of type ${key.asymmetricKeyType ?? 'unknown'}`;
    return `${got}, and ${algorithmName} takes ${wanted.name}`;
  }
  if (wanted.type === 'rsa' && (details.modulusLength ?? 0) < 2048) return `an RSA key of ${details.modulusLength ?? 'unknown'} bits; ${algorithm} takes 2048 bits or more`;
  return null;
}

/** JWE key-management algorithms: a key that names one is for encryption, even without "use". */
const ENCRYPTION_ALGORITHM = /^(RSA1_5|RSA-OAEP.*|ECDH-ES.*|A\d+(GCM)?KW|dir|PBES2-.*)$/;

/**
 * Checks a key set at start: well formed, and every key meant for signatures usable by jose to
 * verify one (a public key node:crypto can read, of the type and size its "alg" takes, or a
 * shared "oct" key of 256 bits or more), with at least one such key. Keys for encryption ("use": "enc", or a JWE
 * "alg") are left alone: identity providers publish them in the same set.
 */
function checkKeySet(jwks: unknown): void {
  try {
    createLocalJWKSet(jwks as JSONWebKeySet);
  } catch (error) {
    invalidKey(`option "jwt.jwks" is not a JSON Web Key Set, {"keys": [...]} (${(error as Error).message})`, error);
  }
  let usable = 0;
  for (const [index, jwk] of (jwks as JSONWebKeySet).keys.entries()) {
    if ((jwk.use !== undefined && jwk.use !== 'sig') || (typeof jwk.alg === 'string' && ENCRYPTION_ALGORITHM.test(jwk.alg))) continue;
    const name = `option "jwt.jwks": key ${index}${typeof jwk.kid === 'string' ? ` ("kid": ${JSON.stringify(jwk.kid)})` : ''}`;
    if (jwk.kty === 'oct') {
      // A shared key, for HS*: as long as "jwt.secret" must be (HS256 needs 256 bits).
      if (typeof jwk.k !== 'string' || Buffer.from(jwk.k, 'base64url').length < 32) invalidKey(`${name} is a shared key ("oct") without a "k" of 32 bytes or more (HS256 needs 256 bits)`);
      usable++;
      continue;
    }
    if (jwk.d !== undefined) invalidKey(`${name} is a private key (it has "d"); give the public keys only, and keep the private ones to the token issuer`);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: jwk as never, format: 'jwk' });
    } catch (error) {
      invalidKey(`${name} is not a usable public key (${(error as Error).message})`, error);
    }
    if (typeof jwk.alg === 'string') {
      if (!Object.hasOwn(PUBLIC_KEY_ALGORITHMS, jwk.alg)) invalidKey(`${name} names "alg" ${JSON.stringify(jwk.alg)}, which is none of ${Object.keys(PUBLIC_KEY_ALGORITHMS).join(', ')}`);
      const problem = fitProblem(key, jwk.alg, `its "alg" ${jwk.alg}`);
      if (problem !== null) invalidKey(`${name} is ${problem}`);
    } else if (key.asymmetricKeyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
      invalidKey(`${name} is an RSA key of ${key.asymmetricKeyDetails?.modulusLength ?? 'unknown'} bits; RS* and PS* take 2048 bits or more`);
    }
    usable++;
  }
  if (usable === 0) invalidKey('option "jwt.jwks" holds no key for signatures (every one is for encryption, "use": "enc", or there is none): no token could be verified');
}

/**
 * Checks the `jwt` option, throwing ERR_INVALID_OPTION with what is wrong: one key source, a
 * long enough secret, a PEM public key that fits its algorithm, a key set whose keys can verify. Called by
 * resolveOptions, so that createServer (and `perihelion serve`) refuse a key that could verify
 * nothing, instead of starting and refusing every token.
 */
export function checkJwtOptions(options: JwtOptions): void {
  const sources = [options.secret, options.publicKey, options.jwks].filter((s) => s !== undefined).length;
  if (sources !== 1) invalidKey('option "jwt" needs exactly one of "secret", "publicKey" or "jwks"');
  if (options.secret !== undefined) {
    if (typeof options.secret !== 'string' || options.secret.length < 32) {
      invalidKey('option "jwt.secret" must be a string of at least 32 characters (HS256 needs 256 bits)');
    }
  } else if (options.publicKey !== undefined) {
    checkPublicKey(options.publicKey, options.algorithm ?? 'RS256');
  } else {
    checkKeySet(options.jwks);
  }
}

export class JwtVerifier {
  private readonly key: Promise<Key>;
  private readonly algorithms: string[];

  constructor(private readonly options: JwtOptions) {
    checkJwtOptions(options);
    if (options.secret !== undefined) {
      this.key = Promise.resolve(new TextEncoder().encode(options.secret));
      this.algorithms = ['HS256', 'HS384', 'HS512'];
    } else if (options.publicKey !== undefined) {
      const algorithm = options.algorithm ?? 'RS256';
      this.key = importSPKI(options.publicKey.trim(), algorithm);
      // Checked as jose checks it (checkJwtOptions); should the import still fail, every token is
      // refused with the reason (verify), never an unhandled rejection.
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
