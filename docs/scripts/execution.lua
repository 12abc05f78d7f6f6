-- Generated from shared/publisher.py (EXECUTION_SCRIPT); tests/unit/test_docs.py keeps it current.
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
local function invalid(why) return redis.error_reply('ERR invalid execution update: ' .. why) end
if #ARGV[2] > 262144 then return invalid('larger than 262144 bytes') end
if not utf8_valid(ARGV[2]) then return invalid('not UTF-8') end
if not strict_numbers(ARGV[2]) then return invalid('not strict JSON') end
local decoded, record = pcall(cjson.decode, ARGV[2])
if not decoded or type(record) ~= 'table' then return invalid('not a JSON object') end
for key in pairs(record) do
  if not ({['execution_id'] = true, ['team_id'] = true, ['status'] = true, ['progress'] = true, ['current_step'] = true, ['result'] = true, ['error'] = true, ['updated_at'] = true, ['version'] = true})[key] then return invalid('unknown field ' .. tostring(key)) end
end
if record['execution_id'] == nil then return invalid('execution_id is required') end
if record['execution_id'] ~= nil then
if type(record['execution_id']) ~= 'string' then return invalid('execution_id must be a string') end
if #record['execution_id'] < 1 or #record['execution_id'] > 128 or not string.find(record['execution_id'], '^[A-Za-z0-9_%.:@%-]+$') then return invalid('execution_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -') end
end
if record['team_id'] == nil then return invalid('team_id is required') end
if record['team_id'] ~= nil then
if type(record['team_id']) ~= 'string' then return invalid('team_id must be a string') end
if #record['team_id'] < 1 or #record['team_id'] > 128 or not string.find(record['team_id'], '^[A-Za-z0-9_%.:@%-]+$') then return invalid('team_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -') end
end
if record['status'] == nil then return invalid('status is required') end
if record['status'] ~= nil then
if not ({['queued'] = true, ['running'] = true, ['completed'] = true, ['failed'] = true})[record['status']] then return invalid('status is not one of the allowed values') end
end
if record['progress'] == nil then return invalid('progress is required') end
if record['progress'] ~= nil then
if type(record['progress']) ~= 'number' or record['progress'] ~= record['progress'] or record['progress'] < 0 or record['progress'] > 100 then return invalid('progress must be a number from 0 to 100') end
end
if not absent(record['current_step']) then
if type(record['current_step']) ~= 'string' then return invalid('current_step must be a string') end
if chars(record['current_step']) > 200 then return invalid('current_step must have 0 to 200 characters') end
end
if record['result'] ~= nil then
if deeper(record['result'], 32, 1) then return invalid('result nests deeper than 32 levels') end
end
if not absent(record['error']) then
if type(record['error']) ~= 'string' then return invalid('error must be a string') end
if chars(record['error']) > 4000 then return invalid('error must have 0 to 4000 characters') end
end
if record['updated_at'] == nil then return invalid('updated_at is required') end
if record['updated_at'] ~= nil then
if not integer(record['updated_at'], 0, 9007199254740991) then return invalid('updated_at must be an integer from 0 to 9007199254740991') end
end
if record['version'] == nil then return invalid('version is required') end
if record['version'] ~= nil then
if not integer(record['version'], 1, 9007199254740991) then return invalid('version must be an integer from 1 to 9007199254740991') end
end
if KEYS[1] ~= 'executions:{' .. record.team_id .. '}' or KEYS[2] ~= 'executions:{' .. record.team_id .. '}:latest' or KEYS[3] ~= 'executions:{' .. record.team_id .. '}:finished' or ARGV[1] ~= 'team:{' .. record.team_id .. '}' then
  return invalid('the keys and the channel must be those of team_id')
end
if ARGV[5] ~= record.execution_id or tonumber(ARGV[6]) ~= record.version then
  return invalid('the execution id and version arguments must be the record\'s')
end
local publish = 'PUBLISH'
if ARGV[8] == 'SPUBLISH' then publish = 'SPUBLISH'
elseif ARGV[8] and ARGV[8] ~= 'PUBLISH' then return invalid('the last argument must be PUBLISH or SPUBLISH') end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local clock = redis.call('TIME')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local n = 1
if last[1] then
  local last_ms, last_n = string.match(last[1][1], '^(%d+)-(%d+)$')
  n = tonumber(last_n) + 1
  if tonumber(last_ms) > ms then ms = tonumber(last_ms) end
end
local next_id = string.format('%d-%d', ms, n)
local held = redis.call('HGET', KEYS[2], ARGV[5])
if held and tonumber(string.match(held, '^(%d+)')) >= tonumber(ARGV[6]) then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], next_id, 'data', ARGV[2])
local now = ms
redis.call('XTRIM', KEYS[1], 'MINID', '~', now - tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6] .. ' ' .. id .. ' ' .. ARGV[2])
if ARGV[7] ~= '0' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[5])
else
  redis.call('ZREM', KEYS[3], ARGV[5])
end
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('HDEL', KEYS[2], expired)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call(publish, ARGV[1], '{"pos":"' .. id .. '","kind":"execution","data":' .. ARGV[2] .. '}')
return id
