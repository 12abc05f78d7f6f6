/**
 * Runtime validation of everything the client reads from the server or from storage.
 *
 * It interprets the JSON schemas generated from the Python contract (the subset of
 * JSON Schema that msgspec emits), so a record is accepted here exactly when the
 * gateway and the publishers would accept it. A valid record comes back with its
 * schema defaults filled in, which is why the generated types can mark those fields
 * as always present.
 */
import {
  MAX_TOPIC_LENGTH,
  POSITION_PATTERN,
  ROOT_SCHEMAS,
  SCHEMA_DEFS,
  TOPIC_PATTERN,
  type ExecutionUpdate,
  type MarketEvent,
  type Notification,
  type ReadMarks,
  type Topic,
} from "./contract.generated";

/** A JSON schema node, as generated: read structurally, never trusted to have a given keyword. */
export type Schema = { readonly [keyword: string]: unknown } | boolean;

/** The keywords `check` understands; a test fails if the generated schemas use any other. */
export const SUPPORTED_KEYWORDS: ReadonlySet<string> = new Set([
  "$ref", "anyOf", "discriminator", "enum", "type", "pattern", "minLength", "maxLength", "minimum", "maximum",
  "items", "prefixItems", "minItems", "maxItems", "properties", "required", "additionalProperties", "default",
  "title", "description",
]);

export class InvalidPayload extends Error {
  constructor(readonly path: string, problem: string) {
    super(`${path || "value"}: ${problem}`);
    this.name = "InvalidPayload";
  }
}

const REF_PREFIX = "#/$defs/";
const patterns = new Map<string, RegExp>();

function regex(source: string): RegExp {
  let compiled = patterns.get(source);
  if (compiled === undefined) {
    compiled = new RegExp(source, "u");
    patterns.set(source, compiled);
  }
  return compiled;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function resolve(ref: unknown, path: string): Schema {
  const name = typeof ref === "string" && ref.startsWith(REF_PREFIX) ? ref.slice(REF_PREFIX.length) : "";
  const defs: Readonly<Record<string, Schema>> = SCHEMA_DEFS;
  const target = Object.hasOwn(defs, name) ? defs[name] : undefined;
  if (target === undefined) throw new InvalidPayload(path, `unknown schema reference ${String(ref)}`);
  return target;
}

function checkType(type: unknown, value: unknown): boolean {
  switch (type) {
    case "string":
      return typeof value === "string";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "boolean":
      return typeof value === "boolean";
    case "null":
      return value === null;
    case "array":
      return Array.isArray(value);
    case "object":
      return isRecord(value);
    default:
      return false;
  }
}

function num(schema: Record<string, unknown>, keyword: string): number | undefined {
  const bound = schema[keyword];
  return typeof bound === "number" ? bound : undefined;
}

function checkArray(schema: Record<string, unknown>, value: readonly unknown[], path: string): unknown[] {
  const min = num(schema, "minItems");
  const max = num(schema, "maxItems");
  if (min !== undefined && value.length < min) throw new InvalidPayload(path, `fewer than ${min} items`);
  if (max !== undefined && value.length > max) throw new InvalidPayload(path, `more than ${max} items`);
  const prefix = Array.isArray(schema.prefixItems) ? (schema.prefixItems as Schema[]) : [];
  const rest = (schema.items ?? true) as Schema;
  return value.map((item, index) => check(prefix[index] ?? rest, item, `${path}[${index}]`));
}

function checkObject(schema: Record<string, unknown>, value: Record<string, unknown>, path: string): object {
  const properties = (isRecord(schema.properties) ? schema.properties : {}) as Record<string, Schema>;
  const required = Array.isArray(schema.required) ? schema.required : [];
  const result: Record<string, unknown> = {};
  for (const name of required) {
    if (typeof name === "string" && !Object.hasOwn(value, name)) throw new InvalidPayload(path, `missing ${name}`);
  }
  for (const [name, field] of Object.entries(properties)) {
    if (Object.hasOwn(value, name)) {
      result[name] = check(field, value[name], `${path}.${name}`);
    } else if (isRecord(field) && Object.hasOwn(field, "default")) {
      result[name] = structuredClone(field.default);
    }
  }
  if (schema.additionalProperties === false) {
    const extra = Object.keys(value).find((name) => !Object.hasOwn(properties, name));
    if (extra !== undefined) throw new InvalidPayload(path, `unexpected field ${extra}`);
  }
  return result;
}

function checkScalar(schema: Record<string, unknown>, value: unknown, path: string): void {
  if (typeof value === "string") {
    const min = num(schema, "minLength");
    const max = num(schema, "maxLength");
    if (min !== undefined && value.length < min) throw new InvalidPayload(path, `shorter than ${min}`);
    if (max !== undefined && value.length > max) throw new InvalidPayload(path, `longer than ${max}`);
    if (typeof schema.pattern === "string" && !regex(schema.pattern).test(value)) {
      throw new InvalidPayload(path, `does not match ${schema.pattern}`);
    }
  }
  if (typeof value === "number") {
    const min = num(schema, "minimum");
    const max = num(schema, "maximum");
    if (min !== undefined && value < min) throw new InvalidPayload(path, `below ${min}`);
    if (max !== undefined && value > max) throw new InvalidPayload(path, `above ${max}`);
  }
}

/** The discriminated option of a tagged union (the market events), for a precise error. */
function tagged(schema: Record<string, unknown>, value: unknown, path: string): Schema | undefined {
  const discriminator = schema.discriminator;
  if (!isRecord(discriminator) || !isRecord(discriminator.mapping) || typeof discriminator.propertyName !== "string") {
    return undefined;
  }
  const tag = isRecord(value) ? value[discriminator.propertyName] : undefined;
  const ref = typeof tag === "string" && Object.hasOwn(discriminator.mapping, tag) ? discriminator.mapping[tag] : undefined;
  if (ref === undefined) throw new InvalidPayload(path, `unknown ${discriminator.propertyName} ${JSON.stringify(tag)}`);
  return resolve(ref, path);
}

/** `value` checked against `schema`, with defaults filled in; throws InvalidPayload. */
export function check(schema: Schema, value: unknown, path = ""): unknown {
  if (schema === true) return value;
  if (schema === false) throw new InvalidPayload(path, "no value allowed here");
  if (schema.$ref !== undefined) return check(resolve(schema.$ref, path), value, path);
  if (Array.isArray(schema.anyOf)) {
    const option = tagged(schema, value, path);
    if (option !== undefined) return check(option, value, path);
    const problems: string[] = [];
    for (const candidate of schema.anyOf as Schema[]) {
      try {
        return check(candidate, value, path);
      } catch (error) {
        if (!(error instanceof InvalidPayload)) throw error;
        problems.push(error.message);
      }
    }
    throw new InvalidPayload(path, `matches no option (${problems.join("; ")})`);
  }
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) {
    throw new InvalidPayload(path, `not one of ${JSON.stringify(schema.enum)}`);
  }
  if (schema.type !== undefined && !checkType(schema.type, value)) {
    throw new InvalidPayload(path, `expected ${String(schema.type)}`);
  }
  if (Array.isArray(value)) return checkArray(schema, value, path);
  if (isRecord(value)) return checkObject(schema, value, path);
  checkScalar(schema, value, path);
  return value;
}

export const parseMarketEvent = (value: unknown): MarketEvent => check(ROOT_SCHEMAS.MarketEvent, value) as MarketEvent;
export const parseNotification = (value: unknown): Notification =>
  check(ROOT_SCHEMAS.Notification, value) as Notification;
export const parseExecutionUpdate = (value: unknown): ExecutionUpdate =>
  check(ROOT_SCHEMAS.ExecutionUpdate, value) as ExecutionUpdate;
export const parseReadMarks = (value: unknown): ReadMarks => check(ROOT_SCHEMAS.ReadMarks, value) as ReadMarks;

export function isTopic(value: unknown): value is Topic {
  return typeof value === "string" && value.length <= MAX_TOPIC_LENGTH && regex(TOPIC_PATTERN).test(value);
}

/** A stream position, `<ms>-<n>`. */
export function isPosition(value: unknown): value is string {
  return typeof value === "string" && regex(POSITION_PATTERN).test(value);
}

/** Orders two positions of one stream: negative, zero or positive, as `a` is before, at or after `b`. */
export function comparePositions(a: string, b: string): number {
  const [aMs = "0", aN = "0"] = a.split("-");
  const [bMs = "0", bN = "0"] = b.split("-");
  const byMs = BigInt(aMs) - BigInt(bMs);
  const delta = byMs !== 0n ? byMs : BigInt(aN) - BigInt(bN);
  return delta < 0n ? -1 : delta > 0n ? 1 : 0;
}
