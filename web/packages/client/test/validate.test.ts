import { describe, expect, it } from "vitest";
import { ROOT_SCHEMAS, SCHEMA_DEFS } from "../src/contract.generated";
import {
  comparePositions,
  InvalidPayload,
  isPosition,
  isTopic,
  parseExecutionUpdate,
  parseMarketEvent,
  parseNotification,
  SUPPORTED_KEYWORDS,
} from "../src/validate";

const ticker = { type: "ticker", exchange: "binance", symbol: "BTC/USDT", ts: 1, recv_ts: 1.5, seq: 3, bid: "1.5" };

describe("validation against the generated schemas", () => {
  it("understands every keyword the generated schemas use", () => {
    const used = new Set<string>();
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) return node.forEach(walk);
      if (typeof node !== "object" || node === null) return;
      for (const [key, value] of Object.entries(node)) {
        used.add(key);
        if (key === "properties" || key === "mapping") Object.values(value as object).forEach(walk);
        else if (key !== "enum" && key !== "default" && key !== "required") walk(value);
      }
    };
    Object.values(SCHEMA_DEFS).forEach(walk);
    Object.values(ROOT_SCHEMAS).forEach(walk);
    for (const keyword of ["propertyName", "mapping"]) used.delete(keyword); // inside discriminator
    expect([...used].filter((keyword) => !SUPPORTED_KEYWORDS.has(keyword))).toEqual([]);
  });

  it("fills in defaults, so optional fields of the contract are always present", () => {
    const event = parseMarketEvent({ type: "ticker", exchange: "kraken", symbol: "ETH/USD", ts: 1, recv_ts: 2 });
    expect(event).toMatchObject({ type: "ticker", seq: 0, bid: null, last: null });
    const note = parseNotification({ id: "n1", user_id: "u", type: "info", title: "t", message: "m", created_at: 1 });
    expect(note.read).toBe(false);
    expect(note.action).toBeNull();
  });

  it("keeps what was sent and drops nothing of a valid record", () => {
    expect(parseMarketEvent(ticker)).toMatchObject(ticker);
    const book = { type: "book", exchange: "okx", symbol: "BTC/USDT", ts: 1, recv_ts: 1, bids: [["2", "1"]], asks: [] };
    expect(parseMarketEvent(book)).toMatchObject({ bids: [["2", "1"]], resync: false });
  });

  it.each([
    [{ ...ticker, type: "quote" }, /unknown type "quote"/],
    [{ ...ticker, bid: 1.5 }, /bid/],
    [{ ...ticker, bid: "1,5" }, /bid/],
    [{ ...ticker, exchange: "nasdaq" }, /exchange/],
    [{ ...ticker, symbol: "btc/usdt" }, /symbol/],
    [{ ...ticker, ts: -1 }, /ts: below 0/],
    [{ ...ticker, seq: 1.5 }, /seq: expected integer/],
    [{ type: "ticker", exchange: "binance", ts: 1, recv_ts: 1 }, /missing symbol/],
    ["ticker", /unknown type/],
    [null, /unknown type/],
  ])("refuses a bad market event %#", (value, message) => {
    expect(() => parseMarketEvent(value)).toThrow(InvalidPayload);
    expect(() => parseMarketEvent(value)).toThrow(message);
  });

  it("refuses oversized books and malformed levels", () => {
    const level = ["1", "1"];
    const base = { type: "book", exchange: "okx", symbol: "BTC/USDT", ts: 1, recv_ts: 1, asks: [] };
    expect(() => parseMarketEvent({ ...base, bids: Array(1001).fill(level) })).toThrow(/more than 1000 items/);
    expect(() => parseMarketEvent({ ...base, bids: [["1", "1", "1"]] })).toThrow(/more than 2 items/);
    expect(() => parseMarketEvent({ ...base, bids: [["1"]] })).toThrow(/fewer than 2 items/);
  });

  it("refuses unknown fields where the contract forbids them", () => {
    const note = { id: "n1", user_id: "u", type: "info", title: "t", message: "m", created_at: 1, admin: true };
    expect(() => parseNotification(note)).toThrow(/unexpected field admin/);
    const update = { execution_id: "e", team_id: "t", status: "running", progress: 101, updated_at: 1, version: 1 };
    expect(() => parseExecutionUpdate(update)).toThrow(/progress: above 100/);
  });

  it("checks topics and positions as the gateway does", () => {
    expect(isTopic("binance:candles.1m:BTC/USDT")).toBe(true);
    expect(isTopic("binance:candles:BTC/USDT")).toBe(false);
    expect(isTopic(`binance:ticker:${"A".repeat(16)}/${"B".repeat(16)}`)).toBe(true);
    expect(isTopic(42)).toBe(false);
    expect(isPosition("1700000000000-42")).toBe(true);
    expect(isPosition("1700000000000")).toBe(false);
    expect(comparePositions("1700000000000-9", "1700000000000-10")).toBe(-1);
    expect(comparePositions("99999999999999999999-1", "99999999999999999998-5")).toBe(1);
    expect(comparePositions("5-5", "5-5")).toBe(0);
  });
});
