import { describe, expect, it } from "vitest";
import type { ExecutionUpdate } from "../src/contract.generated";
import { ExecutionBoard } from "../src/executions";
import { PositionStore } from "../src/positions";
import { readClaims, refreshDelayMs, TokenSource } from "../src/tokens";

const jwt = (claims: object): string => `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;

describe("tokens", () => {
  it("reads sub and exp, and nothing from garbage", () => {
    expect(readClaims(jwt({ sub: "ann", exp: 10, iat: 5 }))).toEqual({ sub: "ann", exp: 10, iat: 5 });
    expect(readClaims(jwt({ sub: "ann" }))).toBeNull();
    expect(readClaims("not a token")).toBeNull();
    expect(readClaims("a.%%%.c")).toBeNull();
  });

  it("plans a refresh a fifth of the lifetime early, at most a minute early", () => {
    expect(refreshDelayMs({ sub: "a", iat: 0, exp: 20 }, 0)).toBe(16_000);
    expect(refreshDelayMs({ sub: "a", iat: 0, exp: 3600 }, 0)).toBe(3_540_000);
    expect(refreshDelayMs({ sub: "a", iat: 0, exp: 20 }, 19_900)).toBe(1000);
  });

  it("reuses a token with time left and asks again for one about to expire", async () => {
    let now = 0;
    let calls = 0;
    const source = new TokenSource(() => jwt({ sub: "a", iat: 0, exp: 100 + calls++ }), () => now);
    const first = await source.current();
    expect(await source.current()).toBe(first);
    now = 95_000;
    expect(await source.current()).not.toBe(first);
    await expect(new TokenSource(() => "").current()).rejects.toThrow(/no token/);
  });
});

describe("shared positions", () => {
  it("only move forward, per user, and ignore garbage in storage", () => {
    localStorage.clear();
    const ann = new PositionStore("ann");
    ann.advance("1700000000000-5");
    ann.advance("1700000000000-3");
    expect(ann.notifications).toBe("1700000000000-5");
    expect(new PositionStore("bob").notifications).toBeUndefined();
    expect(new PositionStore("ann").notifications).toBe("1700000000000-5"); // a reloaded page
    localStorage.setItem(ann.key, "<script>");
    expect(new PositionStore("ann").notifications).toBeUndefined();
    expect(ann.notifications).toBe("1700000000000-5"); // still known to this page
  });

  it("hear of another tab's progress through the storage event", () => {
    localStorage.clear();
    const tab = new PositionStore("cy");
    const heard: string[] = [];
    tab.subscribe((position) => heard.push(position));
    // What the browser does in this tab when another tab writes the key:
    window.dispatchEvent(new StorageEvent("storage", { key: tab.key, newValue: "1700000000000-9" }));
    window.dispatchEvent(new StorageEvent("storage", { key: tab.key, newValue: "garbage" }));
    expect(heard).toEqual(["1700000000000-9"]);
    tab.close();
  });

  it("work without storage (server rendering, blocked storage)", () => {
    const store = new PositionStore("dee", null);
    store.advance("1-1");
    expect(store.notifications).toBe("1-1");
  });
});

describe("executions", () => {
  const update = (id: string, version: number, status: ExecutionUpdate["status"] = "running"): ExecutionUpdate => ({
    execution_id: id, team_id: "red", status, progress: version, current_step: null, result: null, error: null,
    updated_at: version, version,
  });  // prettier-ignore

  it("never shows an older version over a newer one", () => {
    const board = new ExecutionBoard();
    board.apply(update("e1", 2));
    board.apply(update("e1", 1));
    expect(board.store.get().get("e1")?.version).toBe(2);
    board.apply(update("e1", 3, "completed"));
    expect(board.store.get().get("e1")?.status).toBe("completed");
  });

  it("keeps at most maxExecutions, dropping the least recently updated", () => {
    const board = new ExecutionBoard(2);
    board.apply(update("a", 1));
    board.apply(update("b", 2));
    board.apply(update("c", 3));
    expect([...board.store.get().keys()].sort()).toEqual(["b", "c"]);
  });
});
