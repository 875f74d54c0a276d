/**
 * `--tls-cert` and `--tls-key`: HTTPS and WSS for `perihelion serve`. The files are read and
 * checked at start (a key that is not the certificate's, a wrong passphrase: the command stops,
 * saying so), and read again on SIGHUP, so that a renewed certificate (Let's Encrypt renews every
 * 60 to 90 days) is taken without a restart and without dropping a client.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { PerihelionError, checkTlsOptions, pemCertificates, type TlsOptions } from '@perihelion/server';
import { SettingsError } from './settings.js';

/** Where the certificate chain and its key are, and the key's passphrase; client certificates' authority and whether they are required. */
export interface TlsFiles {
  cert: string;
  key: string;
  passphrase?: string;
  ca?: string;
  clientCertificates?: 'request' | 'require';
}

/** What the start-up summary says of client certificates: whether required, and whose signature counts. */
export function describeClientCertificates(tls: TlsOptions): string | null {
  if (tls.clientCertificates === undefined || tls.ca === undefined) return null;
  const authorities = pemCertificates(tls.ca).map((pem) => new X509Certificate(pem).subject.replace(/\n/g, ', '));
  return `client certificates ${tls.clientCertificates === 'require' ? 'required (a client without one is refused)' : 'requested (a client without one connects anonymous)'}, signed by ${authorities.join(' or ')}`;
}

/** Days before its end from which a certificate's coming expiry is said at start and on reload. */
const EXPIRY_WARNING_DAYS = 14;

/** The certificate and key the files hold, once they can serve; else a SettingsError saying why. */
export function readTls(files: TlsFiles): TlsOptions {
  const tls: TlsOptions = {
    cert: readPem(files.cert, '--tls-cert'),
    key: readPem(files.key, '--tls-key'),
    ...(files.passphrase !== undefined ? { passphrase: files.passphrase } : {}),
    ...(files.ca !== undefined ? { ca: readPem(files.ca, '--tls-ca') } : {}),
    ...(files.clientCertificates !== undefined ? { clientCertificates: files.clientCertificates } : {}),
  };
  try {
    checkTlsOptions(tls);
  } catch (error) {
    if (!(error instanceof PerihelionError)) throw error;
    const detail = error.message.replace(/^option "tls": /, '');
    throw new SettingsError(/^ca\b/.test(detail) ? `--tls-ca ${files.ca}: ${detail}` : `--tls-cert ${files.cert} with --tls-key ${files.key}: ${detail}`);
  }
  return tls;
}

function readPem(path: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new SettingsError(`${flag}: cannot read ${JSON.stringify(path)} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
}

/**
 * What the start-up summary says of the certificate: whom it is for and until when; with a
 * warning when it has expired or will within EXPIRY_WARNING_DAYS (browsers refuse an expired one).
 */
export function describeCertificate(tls: TlsOptions, now = Date.now()): { summary: string; warning: string | null } {
  const certificate = new X509Certificate(tls.cert);
  const names = certificate.subjectAltName ?? certificate.subject.replace(/\n/g, ', ');
  const until = new Date(certificate.validTo);
  const summary = `certificate for ${names}, valid until ${until.toISOString()}`;
  const days = (until.getTime() - now) / 86_400_000;
  if (days < 0) return { summary, warning: `the TLS certificate expired on ${until.toISOString()}: browsers and most clients refuse it` };
  if (days < EXPIRY_WARNING_DAYS) return { summary, warning: `the TLS certificate expires in ${Math.ceil(days)} day${Math.ceil(days) === 1 ? '' : 's'} (${until.toISOString()}): renew it, then send SIGHUP` };
  return { summary, warning: null };
}
