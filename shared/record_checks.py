"""The publish scripts' checks of a record, in Lua, generated from the record's msgspec schema.

Services in any language publish notifications and execution updates by
running the scripts of `shared.publisher`, so the scripts, not only this
library, must refuse a record the gateway would not deliver: a record that
is stored must reach its user. The checks are derived from the same
definitions the gateway decodes with (`shared.events`), so they cannot
drift; a property test runs both on generated records.

Where Lua cannot see what msgspec sees, the script is the stricter of the
two: number literals JSON does not allow (hex, NaN, a leading `+`), which
Redis's cjson would read, are refused; integers stay within 2^53 - 1 in both
(Lua numbers, like JavaScript's, are doubles).
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec
from msgspec import inspect

from shared.codec import MAX_PAYLOAD_BYTES
from shared.events import IDENT_PATTERN, MAX_SAFE_INTEGER
from shared.nesting import MAX_JSON_DEPTH

# Shared by every check: UTF-8 validity (msgspec refuses invalid UTF-8, cjson does not),
# character counts (msgspec's lengths count code points), strict JSON number literals,
# and how deep free-form JSON nests.
PRELUDE: Final = r"""
local function utf8_valid(s)
  local i = 1
  while true do
    i = string.find(s, '[\128-\255]', i)
    if not i then return true end
    local c, c2 = string.byte(s, i, i + 1)
    local n
    if c >= 0xC2 and c <= 0xDF then n = 2
    elseif c >= 0xE0 and c <= 0xEF then n = 3
    elseif c >= 0xF0 and c <= 0xF4 then n = 4
    else return false end
    for j = i + 1, i + n - 1 do
      local d = string.byte(s, j)
      if not d or d < 0x80 or d > 0xBF then return false end
    end
    if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F) or (c == 0xF0 and c2 < 0x90)
      or (c == 0xF4 and c2 > 0x8F) then return false end
    i = i + n
  end
end
local function strict_numbers(s)
  local outside, i = {}, 1
  while true do
    local q = string.find(s, '"', i, true)
    outside[#outside + 1] = string.sub(s, i, (q or 0) - 1)
    if not q then break end
    local j = q + 1
    while true do
      local e = string.find(s, '["\\]', j)
      if not e then return false end
      if string.sub(s, e, e) == '"' then i = e + 1 break end
      j = e + 2
    end
  end
  local text = ' ' .. table.concat(outside, ' ') .. ' '
  text = string.gsub(text, '%f[%w]true%f[%W]', ' ')
  text = string.gsub(text, '%f[%w]false%f[%W]', ' ')
  text = string.gsub(text, '%f[%w]null%f[%W]', ' ')
  if string.find(text, '[^%d%-%+%.eE{}%[%],: \t\n\r]') then return false end
  if string.find(text, '[^eE]%+') or string.find(text, '[%-%+][^%d]') then return false end
  if string.find(text, '[^%d]%.') or string.find(text, '%.[^%d]') then return false end
  if string.find(text, '[^%d][eE]') or string.find(text, '[eE][^%d%-%+]') then return false end
  text = string.gsub(text, '[eE][%-%+]?%d+', 'e')  -- an exponent's digits may start with 0
  return not string.find(text, '[^%d%.]0%d')
end
local function chars(s)
  local _, n = string.gsub(s, '[^\128-\191]', '')
  return n
end
local function deeper(v, limit, depth)
  if type(v) ~= 'table' then return false end
  if depth > limit then return true end
  for _, child in pairs(v) do
    if deeper(child, limit, depth + 1) then return true end
  end
  return false
end
local function integer(v, low, high)
  return type(v) == 'number' and v == math.floor(v) and v >= low and v <= high
end
local function absent(v) return v == nil or v == cjson.null end
"""


def record_check(cls: type[msgspec.Struct], what: str) -> str:
    """Lua that decodes ARGV[2] into `record`, or returns an error reply naming the first rule it breaks."""
    lines = [
        f"local function invalid(why) return redis.error_reply('ERR invalid {what}: ' .. why) end",
        f"if #ARGV[2] > {MAX_PAYLOAD_BYTES} then return invalid('larger than {MAX_PAYLOAD_BYTES} bytes') end",
        "if not utf8_valid(ARGV[2]) then return invalid('not UTF-8') end",
        "if not strict_numbers(ARGV[2]) then return invalid('not strict JSON') end",
        "local decoded, record = pcall(cjson.decode, ARGV[2])",
        "if not decoded or type(record) ~= 'table' then return invalid('not a JSON object') end",
    ]
    lines += _struct_checks(inspect.type_info(cls), "record", "")
    return "\n".join(lines)


def _struct_checks(info: Any, var: str, path: str) -> list[str]:
    names = ", ".join(f"['{field.encode_name}'] = true" for field in info.fields)
    lines = [
        f"for key in pairs({var}) do",
        f"  if not ({{{names}}})[key] then return invalid('unknown field ' .. tostring(key)) end",
        "end",
    ]
    for field in info.fields:
        value = f"{var}['{field.encode_name}']"
        name = path + field.encode_name
        kind = field.type
        if isinstance(kind, inspect.UnionType):  # X | None: null is a value, as absent as a missing field
            options = [t for t in kind.types if not isinstance(t, inspect.NoneType)]
            if len(options) != 1:
                raise TypeError(f"{name}: only X | None unions have a Lua check")
            guard, kind = f"not absent({value})", options[0]
        else:  # null is not a value of this type: the type check refuses it
            guard = f"{value} ~= nil"
        if field.required:
            lines.append(f"if {value} == nil then return invalid('{name} is required') end")
        lines += [f"if {guard} then", *_value_checks(kind, value, name), "end"]
    return lines


def _value_checks(kind: Any, value: str, name: str) -> list[str]:  # noqa: PLR0911 - one branch per msgspec type
    if isinstance(kind, inspect.StrType):
        return _string_checks(kind, value, name)
    if isinstance(kind, inspect.IntType):
        first = kind.ge if kind.ge is not None else -MAX_SAFE_INTEGER
        last = min(kind.le if kind.le is not None else MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
        why = f"{name} must be an integer from {first} to {last}"
        return [f"if not integer({value}, {first}, {last}) then return invalid('{why}') end"]
    if isinstance(kind, inspect.FloatType):
        rule = f"type({value}) ~= 'number' or {value} ~= {value}"
        rule += f" or {value} < {kind.ge}" if kind.ge is not None else ""
        rule += f" or {value} > {kind.le}" if kind.le is not None else ""
        return [f"if {rule} then return invalid('{name} must be a number from {kind.ge} to {kind.le}') end"]
    if isinstance(kind, inspect.BoolType):
        return [f"if type({value}) ~= 'boolean' then return invalid('{name} must be true or false') end"]
    if isinstance(kind, inspect.EnumType):
        members: list[enum.Enum] = list(kind.cls)
        allowed = ", ".join(f"['{m.value}'] = true" for m in members)
        return [f"if not ({{{allowed}}})[{value}] then return invalid('{name} is not one of the allowed values') end"]
    if isinstance(kind, inspect.StructType):
        return [
            f"if type({value}) ~= 'table' then return invalid('{name} must be an object') end",
            *_struct_checks(kind, value, name + "."),
        ]
    if isinstance(kind, inspect.AnyType):
        return [
            f"if deeper({value}, {MAX_JSON_DEPTH}, 1) then"
            f" return invalid('{name} nests deeper than {MAX_JSON_DEPTH} levels') end"
        ]
    raise TypeError(f"{name}: no Lua check for {kind!r}")


def _string_checks(kind: Any, value: str, name: str) -> list[str]:
    lines = [f"if type({value}) ~= 'string' then return invalid('{name} must be a string') end"]
    if kind.pattern is not None:
        if kind.pattern != IDENT_PATTERN:
            raise TypeError(f"{name}: no Lua translation of the pattern {kind.pattern!r}")
        # IDENT_PATTERN is ASCII only: its length in bytes is its length in characters.
        lines.append(
            f"if #{value} < 1 or #{value} > 128 or not string.find({value}, '^[A-Za-z0-9_%.:@%-]+$') then"
            f" return invalid('{name} must be 1-128 characters of A-Z a-z 0-9 _ . : @ -') end"
        )
    low, high = kind.min_length, kind.max_length
    if low is not None or high is not None:
        rule = " or ".join(
            part
            for part in (
                f"chars({value}) < {low}" if low is not None else "",
                f"chars({value}) > {high}" if high is not None else "",
            )
            if part
        )
        lines.append(f"if {rule} then return invalid('{name} must have {low or 0} to {high} characters') end")
    return lines


def limits_table(cls: type[msgspec.Struct]) -> str:
    """The record's fields and their limits as a Markdown table, for docs/protocol.md (a test keeps it current)."""
    rows = ["| field | required | type and limits |", "|---|---|---|"]
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    for field in info.fields:
        rows.append(f"| `{field.encode_name}` | {'yes' if field.required else 'no'} | {_describe(field.type)} |")
    return "\n".join(rows)


def _describe(kind: Any) -> str:  # noqa: PLR0911 - one branch per msgspec type
    if isinstance(kind, inspect.UnionType):
        return " or ".join(_describe(t) for t in kind.types)
    if isinstance(kind, inspect.NoneType):
        return "`null`"
    if isinstance(kind, inspect.StrType):
        if kind.pattern == IDENT_PATTERN:
            return "string, 1-128 characters of `A-Z a-z 0-9 _ . : @ -`"
        return f"string, {kind.min_length or 0}-{kind.max_length} characters"
    if isinstance(kind, inspect.IntType):
        return f"integer, {kind.ge} to {kind.le}"
    if isinstance(kind, inspect.FloatType):
        return f"number, {kind.ge} to {kind.le}"
    if isinstance(kind, inspect.BoolType):
        return "boolean"
    if isinstance(kind, inspect.EnumType):
        return "one of " + ", ".join(f"`{m.value}`" for m in kind.cls)
    if isinstance(kind, inspect.StructType):
        return "object: " + "; ".join(f"`{f.encode_name}`: {_describe(f.type)}" for f in kind.fields)
    if isinstance(kind, inspect.AnyType):
        return f"any JSON, nested at most {MAX_JSON_DEPTH} levels"
    raise TypeError(f"no description of {kind!r}")
