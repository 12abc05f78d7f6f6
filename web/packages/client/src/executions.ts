/**
 * The latest state of each execution of the user's teams, never older over newer.
 *
 * An update is applied only when its `version` is greater than the one held:
 * replays after a reconnect and the current states sent on connect can then
 * arrive in any order. At most `maxExecutions` are kept; the least recently
 * updated go first.
 */
import type { ExecutionUpdate } from "./contract.generated";
import { Store } from "./store";

export type ExecutionsState = ReadonlyMap<string, ExecutionUpdate>;

export class ExecutionBoard {
  readonly store = new Store<ExecutionsState>(new Map());

  constructor(readonly maxExecutions = 200) {}

  apply(update: ExecutionUpdate): void {
    const current = this.store.get();
    const held = current.get(update.execution_id);
    if (held !== undefined && held.version >= update.version) return;
    const next = new Map(current);
    next.set(update.execution_id, update);
    if (next.size > this.maxExecutions) {
      const oldest = [...next.values()].sort((a, b) => a.updated_at - b.updated_at)[0];
      if (oldest) next.delete(oldest.execution_id);
    }
    this.store.set(next);
  }
}
