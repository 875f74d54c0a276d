/**
 * Bayeux wire errors, built from one table.
 *
 * The spec's grammar (§error) is `error = code ":" [args] ":" message`, args being
 * comma-separated: "401::No client ID", "402:xj3sjdsjdsjad:Unknown Client ID". Clients do not
 * branch on the code (CometD and Faye act on `advice.reconnect`), so codes serve people reading
 * logs; they follow the spec's examples and Faye's table where the spec is silent.
 */

export const ERRORS = {
  versionMismatch: { code: 300, message: 'Version mismatch' },
  connectionTypeMismatch: { code: 301, message: 'Connection types not supported' },
  badRequest: { code: 400, message: 'Bad request' },
  missingParameter: { code: 400, message: 'Missing required parameter' },
  clientIdMissing: { code: 401, message: 'No client ID' },
  clientUnknown: { code: 402, message: 'Unknown client' },
  channelForbidden: { code: 403, message: 'Forbidden channel' },
  refusedByApplication: { code: 403, message: 'Refused by the application' },
  handshakeDenied: { code: 403, message: 'Handshake denied' },
  forbidden: { code: 403, message: 'Forbidden' },
  unauthorized: { code: 403, message: 'Unauthorized' },
  rateLimited: { code: 429, message: 'Too many requests' },
  methodNotAllowed: { code: 405, message: 'Method not allowed' },
  channelInvalid: { code: 405, message: 'Invalid channel' },
  publishFailed: { code: 407, message: 'Publish failed' },
  tooManySubscriptions: { code: 409, message: 'Too many subscriptions' },
  stateConflict: { code: 409, message: 'State conflict' },
  messageTooLarge: { code: 413, message: 'Message too large' },
  batchTooLarge: { code: 413, message: 'Too many messages in one request' },
  requestTooLarge: { code: 413, message: 'Request too large' },
  serverError: { code: 500, message: 'Internal server error' },
  overloaded: { code: 503, message: 'Server overloaded' },
  unavailable: { code: 503, message: 'Temporarily unavailable' },
} as const;

export type ErrorName = keyof typeof ERRORS;

/** `ERRORS[name]` as a wire string; args are joined with "," as the grammar requires. */
export function bayeuxError(name: ErrorName, args: readonly string[] = [], detail?: string): string {
  const { code, message } = ERRORS[name];
  // ":" would break the three-part grammar inside args; "," separates args.
  const safeArgs = args.map((a) => String(a).replace(/[:,]/g, '_')).join(',');
  return `${code}:${safeArgs}:${detail === undefined ? message : `${message}: ${detail}`}`;
}

export interface ParsedError {
  code: number;
  args: string[];
  message: string;
}

/** Parses a wire error; messages may contain ":" so only the first two separate fields. */
export function parseError(error: string): ParsedError | null {
  const match = /^(\d{3}):([^:]*):(.*)$/s.exec(error);
  if (!match) return null;
  return {
    code: Number(match[1]),
    args: match[2] === '' ? [] : match[2]!.split(','),
    message: match[3]!,
  };
}
