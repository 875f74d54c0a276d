/**
 * What the client commands (`publish`, `subscribe`) share: where the server is, how options fall
 * back to the environment, how network failures are worded, and the exit codes:
 * 0 done, 1 the server failed or refused (or could not be reached), 2 a usage error.
 */
import type { Command } from 'commander';

export const DEFAULT_URL = 'http://localhost:8080';

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

/** The server failed, refused or could not be reached: exit code 1. */
export class CommandFailure extends Error {}

/** A flag, else a non-empty environment variable, else undefined. */
export function flagOrEnv(flag: string | undefined, fromEnv: string | undefined): string | undefined {
  if (flag !== undefined) return flag;
  return fromEnv !== undefined && fromEnv !== '' ? fromEnv : undefined;
}

/** The server's base address from `--url`, else PERIHELION_URL, else http://localhost:8080. */
export function serverUrl(flag: string | undefined, env: NodeJS.ProcessEnv): URL {
  const raw = flagOrEnv(flag, env.PERIHELION_URL) ?? DEFAULT_URL;
  const source = flag !== undefined ? '--url' : 'PERIHELION_URL';
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`${source} must be an address such as ${DEFAULT_URL}, got ${JSON.stringify(raw)}`);
  }
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) {
    throw new UsageError(`${source} must start with http://, https://, ws:// or wss://, got ${JSON.stringify(raw)}`);
  }
  return url;
}

/** `path` under the base address (which may have a path of its own, behind a proxy), over HTTP or WebSocket. */
export function endpoint(base: URL, path: string, scheme: 'http' | 'ws'): string {
  const url = new URL(base);
  const secure = url.protocol === 'https:' || url.protocol === 'wss:';
  url.protocol = scheme === 'ws' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
  url.pathname = `${url.pathname.replace(/\/+$/, '')}${path}`;
  url.search = '';
  url.hash = '';
  return url.toString();
}

function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { code, errors } = error as { code?: unknown; errors?: unknown };
  if (typeof code === 'string') return code;
  // Connecting to a name with several addresses (localhost: ::1 and 127.0.0.1) fails with all of them.
  return Array.isArray(errors) ? errorCode(errors[0]) : undefined;
}

/** OpenSSL's codes for a certificate no authority this machine trusts vouches for. */
const UNTRUSTED_CERTIFICATE = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']);

/** Why `url` could not be reached, in words a user can act on. */
export function networkProblem(error: unknown, url: string): string {
  // fetch reports "fetch failed" with the reason as its cause.
  const reason = error instanceof Error && error.cause !== undefined ? error.cause : error;
  const code = errorCode(reason);
  const message = reason instanceof Error ? reason.message : String(reason);
  if (code === 'ECONNREFUSED') {
    return `the server is not reachable at ${url} (connection refused): is it running? Give its address with --url or PERIHELION_URL`;
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `cannot find the host of ${url} (${code})`;
  if (code !== undefined && UNTRUSTED_CERTIFICATE.has(code)) {
    return `cannot reach ${url}: its certificate is not trusted here (${message}); if an authority of your own signed it, trust that authority with NODE_EXTRA_CA_CERTS=<its PEM file>`;
  }
  if (code === 'CERT_HAS_EXPIRED') return `cannot reach ${url}: its certificate has expired`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `cannot reach ${url}: its certificate is for other host names (${message})`;
  if (reason instanceof Error && reason.name === 'TimeoutError') return `no answer from ${url} in time`;
  // fetch never connects to the ports browsers block (1, 25, 6000, …).
  if (message === 'bad port') return `${url} uses a port that HTTP clients refuse to connect to; run the server on another port`;
  const status = /^Unexpected server response: (\d+)$/.exec(message);
  if (status) {
    const hint = status[1] === '404' ? ': is the path right? (--path, PERIHELION_PATH)' : '';
    return `${url} did not accept a WebSocket (HTTP ${status[1]})${hint}`;
  }
  return `cannot reach ${url}: ${message || code || 'unknown error'}`;
}

/** Exits once what was written to stdout is out (a pipe to `jq` must get every line). */
export function exit(code: number): void {
  process.exitCode = code;
  process.stdout.write('', () => process.exit(code));
  setTimeout(() => process.exit(code), 1000).unref();
}

/** Runs a command's work and exits with its code; usage errors exit 2, failures 1. */
export function runAction(work: () => Promise<number>): Promise<void> {
  return work().then(exit, (error: unknown) => {
    if (error instanceof UsageError || error instanceof CommandFailure) {
      process.stderr.write(`perihelion: ${error.message}\n`);
      exit(error instanceof UsageError ? 2 : 1);
      return;
    }
    throw error;
  });
}

/**
 * Command-line mistakes commander finds itself (a missing argument, an unknown option) exit 2 too.
 * The server's address given as an argument (as many clients take it) is pointed to `--url`.
 */
export function usageExitsWith2(command: Command): Command {
  return command.exitOverride((error) => {
    if (error.exitCode !== 0 && command.args.some(isAddress)) process.stderr.write(`${urlGoesInFlag(command.name(), command.registeredArguments.map((a) => `<${a.name()}>`).join(' '))}\n`);
    process.exit(error.exitCode === 0 ? 0 : 2);
  });
}

/** Whether a command-line argument is a server's address rather than a channel. */
export function isAddress(arg: string): boolean {
  return /^(https?|wss?):\/\//i.test(arg);
}

/** Where the server's address goes, for someone who gave it as an argument. */
export function urlGoesInFlag(command: string, args: string): string {
  return `The server's address goes in --url (or PERIHELION_URL), e.g. perihelion ${command} --url http://localhost:8080 ${args}`;
}
