/**
 * Programmer and I/O errors, each with a stable `code` (wire errors are Bayeux strings, see
 * @perihelion/protocol errors.ts). Every code is listed in docs/errors.md; a test keeps the two in step.
 */
export const ERROR_CODES = {
  ERR_INVALID_OPTION: 'An option passed to createServer or the CLI has the wrong type or an unknown name.',
  ERR_ENGINE_CLOSED: 'The engine was used before start() or after close().',
  ERR_ENGINE_UNAVAILABLE: 'The engine cannot reach its store (Redis): at start, or while the connection is lost.',
  ERR_SERVER_CLOSED: 'The server was used after close().',
  ERR_INVALID_CHANNEL: 'A server-side call named a channel that is not a valid Bayeux channel.',
  ERR_INVALID_ARGUMENT: 'A server-side call got an argument of the wrong type or out of range.',
  ERR_REFUSED: 'The server refused what a local client asked (handshake, subscribe, publish, request); the message carries the Bayeux error.',
  ERR_AUTHENTICATION: 'An authenticator refused a handshake (AuthenticationError); its reason reaches the client.',
  ERR_CALLOUT: 'A call-out to the application got no usable answer (CalloutError, reported through the error event).',
  ERR_WEBHOOK: 'A webhook request failed, or webhook events were dropped (WebhookError, reported through the error event).',
  ERR_HOOK_TIMEOUT: "A state channel's validate hook did not decide within validateTimeout (reported through the error event; the proposal is refused).",
  ERR_NOT_PUBLISHED: "A state channel's change was made and saved, but its patch could not be published (reported through the error event).",
  ERR_STATE_DUPLICATE: 'Another node holds that state channel (server.state() rejects), or another process serves it too (reported through the error event, once).',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class PerihelionError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PerihelionError';
  }
}
