/**
 * The user's notification position, shared by all of the user's tabs and kept across reloads.
 *
 * Stored in localStorage under a per-user key; other tabs learn of a change from
 * the `storage` event. Positions only move forward, so two tabs writing at once
 * cannot move the shared position back. Without localStorage (server rendering,
 * some private modes) the position lives in memory for this page only.
 *
 * Execution positions are not shared: a tab that resumes a team's stream from
 * another tab's position would skip what it missed itself, and a tab with no
 * state of its own needs the executions' current states, which the gateway sends
 * only to a socket that gives no position for that team. See connection.ts.
 */
import { comparePositions, isPosition } from "./validate";

type Listener = (position: string) => void;

function storageOrNull(): Storage | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null; // access denied (e.g. cookies blocked)
  }
}

export class PositionStore {
  readonly key: string;
  #memory: string | undefined;
  readonly #listeners = new Set<Listener>();
  readonly #storage: Storage | null;
  readonly #onStorage = (event: StorageEvent): void => {
    if (event.key === this.key && isPosition(event.newValue)) this.#advanceMemory(event.newValue);
  };

  constructor(userId: string, storage: Storage | null = storageOrNull()) {
    this.key = `fanout:positions:${userId}:notifications`;
    this.#storage = storage;
    if (storage !== null && typeof window !== "undefined") window.addEventListener("storage", this.#onStorage);
  }

  /** The greatest position any of the user's tabs has seen, or undefined. */
  get notifications(): string | undefined {
    const stored = this.#read();
    if (stored !== undefined) this.#advanceMemory(stored);
    return this.#memory;
  }

  /** Record that `position` was seen; ignored unless it is further than the shared one. */
  advance(position: string): void {
    if (!isPosition(position)) return;
    if (!this.#advanceMemory(position)) return;
    try {
      this.#storage?.setItem(this.key, position);
    } catch {
      // Storage full or denied: the position still holds for this page.
    }
  }

  /** Calls `listener` whenever the shared position moves forward (in this tab or another). */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  close(): void {
    if (typeof window !== "undefined") window.removeEventListener("storage", this.#onStorage);
    this.#listeners.clear();
  }

  #read(): string | undefined {
    let value: string | null = null;
    try {
      value = this.#storage?.getItem(this.key) ?? null;
    } catch {
      return undefined;
    }
    return isPosition(value) ? value : undefined; // anything else in storage is ignored
  }

  #advanceMemory(position: string): boolean {
    if (this.#memory !== undefined && comparePositions(position, this.#memory) <= 0) return false;
    this.#memory = position;
    for (const listener of this.#listeners) listener(position);
    return true;
  }
}
