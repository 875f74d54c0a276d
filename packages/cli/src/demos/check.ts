/**
 * Checks of what the demo pages send: every client input is validated on the server, and a
 * refusal says plainly what was wrong (it reaches the page as the Bayeux error's message).
 */
import { bayeuxError } from '@perihelion/protocol';
import { ServiceRefusal, type Perihelion } from '@perihelion/server';

/** A refusal for a /service request: `400:<channel>:Bad request: <detail>`. */
export function badRequest(channel: string, detail: string): ServiceRefusal {
  return new ServiceRefusal(bayeuxError('badRequest', [channel], detail));
}

/** A refusal of a request that is well-formed but cannot be done now: `403:<channel>:Refused by the application: <detail>`. */
export function refused(channel: string, detail: string): ServiceRefusal {
  return new ServiceRefusal(bayeuxError('refusedByApplication', [channel], detail));
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * `value` as a trimmed string of 1 to `max` characters (counted as code points), or an error
 * message naming `field`.
 */
export function text(value: unknown, field: string, max: number): string | { error: string } {
  if (typeof value !== 'string') return { error: `${field} must be a string` };
  const trimmed = value.trim();
  const length = [...trimmed].length;
  if (length === 0) return { error: `${field} must not be empty` };
  if (length > max) return { error: `${field} must be at most ${max} characters (got ${length})` };
  // Control characters (newlines aside) have no place in a one-line demo text.
  if (/[\u0000-\u0009\u000b-\u001f\u007f]/.test(trimmed)) return { error: `${field} must not contain control characters` };
  return trimmed;
}

/** Keys of `value` outside `allowed`, for a clear "unexpected field" error. */
export function unexpectedKeys(value: Record<string, unknown>, allowed: readonly string[]): string[] {
  return Object.keys(value).filter((key) => !allowed.includes(key));
}

/**
 * Runs `tick` every `ms` milliseconds without keeping the process alive, until the server
 * starts shutting down (or `stop()` is called). Errors are reported through the server.
 */
export function every(server: Perihelion, ms: number, tick: () => void | Promise<void>, report: (error: unknown) => void): () => void {
  const timer = setInterval(() => {
    if (server.isDraining) {
      clearInterval(timer);
      return;
    }
    Promise.resolve()
      .then(tick)
      .catch((error: unknown) => {
        // A publish racing the shutdown is no failure.
        if ((error as { code?: unknown } | null)?.code === 'ERR_SERVER_CLOSED') clearInterval(timer);
        else report(error);
      });
  }, ms);
  timer.unref();
  return () => clearInterval(timer);
}
