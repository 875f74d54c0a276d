/**
 * A step that answers at once when it can, and with a promise only when it must wait (an
 * asynchronous hook, Redis): on the paths every connection and message takes, each promise and
 * each turn of the microtask queue is paid per request, and with the memory engine and the
 * default policy nothing there needs to wait.
 */
export type MaybePromise<T> = T | Promise<T>;

/** `next(value)`: now when `value` is at hand, or once its promise fulfils. */
export function andThen<T, U>(value: MaybePromise<T>, next: (value: T) => MaybePromise<U>): MaybePromise<U> {
  return value instanceof Promise ? value.then(next) : next(value);
}
