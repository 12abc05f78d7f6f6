/**
 * The smallest observable value: an immutable snapshot plus change listeners.
 *
 * Every stateful helper (connection state, notification feed, executions) keeps
 * its state in one, so React can read it with useSyncExternalStore and plain
 * code can subscribe to it the same way.
 */
export class Store<T> {
  #value: T;
  readonly #listeners = new Set<() => void>();

  constructor(initial: T) {
    this.#value = initial;
  }

  /** The current snapshot; the same object until the next `set`. */
  readonly get = (): T => this.#value;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  set(value: T): void {
    if (Object.is(value, this.#value)) return;
    this.#value = value;
    for (const listener of [...this.#listeners]) listener();
  }
}
