/**
 * HTTPS and WSS on the server's own listener (`listen({ tls })`): browsers on an https:// page may
 * open only wss:// and https:// lines, so a server without a proxy in front must speak TLS itself.
 * The certificate and key are checked before anything listens, and can be replaced while the
 * server runs (`reloadTls`), as certificates renewed every few weeks need: connections made after
 * that use the new ones, those open keep theirs.
 */
import { X509Certificate } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { createSecureContext, type SecureContextOptions, type TLSSocket } from 'node:tls';
import { PerihelionError } from '../errors.js';

/** The certificate and private key the server's own listener serves HTTPS and WSS with. */
export interface TlsOptions {
  /** The certificate chain, PEM: the server's certificate first, then the intermediates. */
  cert: string | Buffer;
  /** Its private key, PEM. */
  key: string | Buffer;
  /** The key's passphrase, when it is encrypted. */
  passphrase?: string;
  /**
   * Client certificates: `require` refuses, in the TLS handshake, a client without a certificate
   * that `ca` signed; `request` asks for one and lets a client without one in. Either way a
   * verified certificate is in the request's facts (`request.clientCertificate`), for the
   * authenticator. Set at `listen`; `reloadTls` may replace `ca`, not change this.
   */
  clientCertificates?: 'request' | 'require';
  /** The certificate authorities, PEM (one or more), that client certificates must be signed by. */
  ca?: string | Buffer;
}

/** The node:tls server options `clientCertificates` stands for. */
export function clientCertificateOptions(tls: TlsOptions): { requestCert: boolean; rejectUnauthorized: boolean } {
  return { requestCert: tls.clientCertificates !== undefined, rejectUnauthorized: tls.clientCertificates === 'require' };
}

/**
 * The options of a secure context made of `tls`, once a context could be made of them: a
 * certificate or key that is not PEM, a key that does not fit the certificate, a wrong passphrase
 * are ERR_INVALID_OPTION, saying which.
 */
export function secureContextOptions(tls: TlsOptions): SecureContextOptions {
  if (typeof tls !== 'object' || tls === null) throw invalid('must be an object with cert and key (PEM)');
  for (const part of ['cert', 'key'] as const) {
    const value: unknown = tls[part];
    if (!(typeof value === 'string' || Buffer.isBuffer(value)) || value.length === 0) throw invalid(`${part} must be PEM text (a string or a Buffer), got ${describe(value)}`);
  }
  if (tls.passphrase !== undefined && typeof tls.passphrase !== 'string') throw invalid(`passphrase must be a string, got ${describe(tls.passphrase)}`);
  if (tls.clientCertificates !== undefined && tls.clientCertificates !== 'request' && tls.clientCertificates !== 'require') {
    throw invalid(`clientCertificates is "request" or "require", got ${JSON.stringify(tls.clientCertificates)}`);
  }
  if (tls.ca !== undefined) checkAuthorities(tls.ca);
  if (tls.clientCertificates !== undefined && tls.ca === undefined) throw invalid(`clientCertificates needs ca: the authorities (PEM) whose client certificates are accepted`);
  const options: SecureContextOptions = { cert: tls.cert, key: tls.key, ...(tls.passphrase !== undefined ? { passphrase: tls.passphrase } : {}), ...(tls.ca !== undefined ? { ca: tls.ca } : {}) };
  try {
    createSecureContext(options);
  } catch (error) {
    throw invalid(`the certificate and key cannot serve: ${explain(error)}`);
  }
  return options;
}

/**
 * Throws unless `ca` is PEM of one or more certificates (node:tls takes anything there, and a
 * client certificate then never verifies, without a word).
 */
function checkAuthorities(ca: unknown): void {
  if (!(typeof ca === 'string' || Buffer.isBuffer(ca)) || ca.length === 0) throw invalid(`ca must be PEM text of certificates (a string or a Buffer), got ${describe(ca)}`);
  const blocks = pemCertificates(ca);
  if (blocks.length === 0) throw invalid('ca holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  blocks.forEach((block, i) => {
    try {
      new X509Certificate(block);
    } catch (error) {
      throw invalid(`ca: certificate ${i + 1} of ${blocks.length} cannot be read (${error instanceof Error ? error.message : String(error)})`);
    }
  });
}

/** The PEM certificates in `pem` (a bundle of authorities, say), each as its own PEM text. */
export function pemCertificates(pem: string | Buffer): string[] {
  return String(pem).match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

/** The certificate a client presented over TLS and the server verified against its `ca`. */
export interface ClientCertificate {
  /** Its subject as OpenSSL writes it, one attribute a line: "CN=device-17\nO=Acme". */
  subject: string;
  /** The subject's common name (CN), if it has one. */
  commonName: string | undefined;
  /** Its subject alternative names ("DNS:a.example, email:x@example"), if any. */
  subjectAltName: string | undefined;
  /** Who signed it, as `subject`. */
  issuer: string;
  serialNumber: string;
  /** SHA-256 fingerprint, "AB:CD:…": names this very certificate. */
  fingerprint256: string;
  /** When it stops being valid, as OpenSSL writes it. */
  validTo: string;
}

/** Read once per connection: a long-polling client asks with every request. */
const CERTIFICATE = Symbol('perihelion.clientCertificate');
type Tagged = TLSSocket & { [CERTIFICATE]?: ClientCertificate | null };

/** The verified client certificate of the connection under a request, if it has one. */
export function clientCertificateOf(socket: Socket): ClientCertificate | undefined {
  const tlsSocket = socket as Tagged;
  // Only a certificate that verified against `ca`: an unverified one says nothing of who it is.
  if (tlsSocket.authorized !== true) return undefined;
  let known = tlsSocket[CERTIFICATE];
  if (known === undefined) {
    const certificate = tlsSocket.getPeerX509Certificate?.();
    known = certificate === undefined ? null : describeCertificate(certificate);
    tlsSocket[CERTIFICATE] = known;
  }
  return known ?? undefined;
}

function describeCertificate(certificate: X509Certificate): ClientCertificate {
  return {
    subject: certificate.subject,
    commonName: /^CN=(.*)$/m.exec(certificate.subject)?.[1],
    subjectAltName: certificate.subjectAltName,
    issuer: certificate.issuer,
    serialNumber: certificate.serialNumber,
    fingerprint256: certificate.fingerprint256,
    validTo: certificate.validTo,
  };
}

/** What OpenSSL's message means to someone who gave a certificate and a key. */
function explain(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  if (/key values mismatch/i.test(message)) return `the key is not the certificate's (${message})`;
  if (/bad decrypt|bad password|interrupted or cancelled/i.test(message)) return `the key is encrypted and the passphrase is missing or wrong (${message})`;
  if (/no start line|bad base64|wrong tag|header too long/i.test(message)) return `not PEM of a certificate and its private key (${message})`;
  return message;
}

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
}

function invalid(detail: string): PerihelionError {
  return new PerihelionError('ERR_INVALID_OPTION', `option "tls": ${detail}`);
}

/** Throws ERR_INVALID_OPTION, saying why, when `tls` cannot serve (see secureContextOptions). */
export function checkTlsOptions(tls: TlsOptions): void {
  secureContextOptions(tls);
}

/**
 * An `http://` request sent to the HTTPS port gets a plain-HTTP 400 that says to use `https://`
 * (as nginx answers), instead of the empty reply of a TLS layer that cannot parse it. The first
 * byte tells: a TLS connection starts with a handshake record (0x16), an HTTP request with the
 * letters of its method. Anything else is left to TLS to refuse. Silence before that first byte is
 * cut after `idleMs`, as a handshake that never ends is.
 */
export function answerPlainHttp(server: HttpsServer, idleMs: number): void {
  const listeners = server.listeners('connection');
  // node:tls starts TLS on a connection with its one listener; another layout is left as it is.
  if (listeners.length !== 1) return;
  const startTls = listeners[0] as (socket: Socket) => void;
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    const fail = (): void => void socket.destroy();
    socket.on('error', fail);
    socket.setTimeout(idleMs, fail);
    socket.once('data', (chunk: Buffer) => {
      if (!/^[A-Z]/.test(String.fromCharCode(chunk[0]!))) {
        socket.off('error', fail);
        socket.setTimeout(0, fail);
        socket.pause();
        // TLS reads what is buffered before it takes the socket over.
        socket.unshift(chunk);
        startTls.call(server, socket);
        return;
      }
      // What else it sends is read and dropped, so that its end is seen; a client that keeps the
      // connection open after the answer is cut after `idleMs` of silence, as before the first byte.
      socket.on('data', () => {});
      socket.end(plainHttpAnswer(chunk.toString('latin1', 0, Math.min(chunk.length, 4096))));
    });
  });
}

/** The 400 for a plain-HTTP request, naming the https:// URL it meant when its request line and Host say it plainly. */
function plainHttpAnswer(head: string): string {
  const target = /^[A-Z]+ (\/[\x21-\x7e]{0,500}) HTTP\/1\.[01]\r\n/.exec(head)?.[1];
  const host = /\r\nhost:[ \t]*([A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?)[ \t]*\r\n/i.exec(head)?.[1];
  const url = target !== undefined && host !== undefined ? `https://${host}${target}` : 'https://';
  const body = `This port speaks HTTPS: use ${url} (wss:// for a WebSocket).\n`;
  return `HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
