-- Generated from shared/publisher.py (NOTIFICATION_SCRIPT); tests/unit/test_docs.py keeps it current.
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
local function invalid(why) return redis.error_reply('ERR invalid notification: ' .. why) end
if #ARGV[2] > 262144 then return invalid('larger than 262144 bytes') end
if not utf8_valid(ARGV[2]) then return invalid('not UTF-8') end
if not strict_numbers(ARGV[2]) then return invalid('not strict JSON') end
local decoded, record = pcall(cjson.decode, ARGV[2])
if not decoded or type(record) ~= 'table' then return invalid('not a JSON object') end
for key in pairs(record) do
  if not ({['id'] = true, ['user_id'] = true, ['type'] = true, ['title'] = true, ['message'] = true, ['read'] = true, ['created_at'] = true, ['action'] = true})[key] then return invalid('unknown field ' .. tostring(key)) end
end
if record['id'] == nil then return invalid('id is required') end
if record['id'] ~= nil then
if type(record['id']) ~= 'string' then return invalid('id must be a string') end
if #record['id'] < 1 or #record['id'] > 128 or not string.find(record['id'], '^[A-Za-z0-9_%.:@%-]+$') then return invalid('id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -') end
end
if record['user_id'] == nil then return invalid('user_id is required') end
if record['user_id'] ~= nil then
if type(record['user_id']) ~= 'string' then return invalid('user_id must be a string') end
if #record['user_id'] < 1 or #record['user_id'] > 128 or not string.find(record['user_id'], '^[A-Za-z0-9_%.:@%-]+$') then return invalid('user_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -') end
end
if record['type'] == nil then return invalid('type is required') end
if record['type'] ~= nil then
if not ({['info'] = true, ['success'] = true, ['warning'] = true, ['error'] = true})[record['type']] then return invalid('type is not one of the allowed values') end
end
if record['title'] == nil then return invalid('title is required') end
if record['title'] ~= nil then
if type(record['title']) ~= 'string' then return invalid('title must be a string') end
if chars(record['title']) > 200 then return invalid('title must have 0 to 200 characters') end
end
if record['message'] == nil then return invalid('message is required') end
if record['message'] ~= nil then
if type(record['message']) ~= 'string' then return invalid('message must be a string') end
if chars(record['message']) > 4000 then return invalid('message must have 0 to 4000 characters') end
end
if record['read'] ~= nil then
if type(record['read']) ~= 'boolean' then return invalid('read must be true or false') end
end
if record['created_at'] == nil then return invalid('created_at is required') end
if record['created_at'] ~= nil then
if not integer(record['created_at'], 0, 9007199254740991) then return invalid('created_at must be an integer from 0 to 9007199254740991') end
end
if not absent(record['action']) then
if type(record['action']) ~= 'table' then return invalid('action must be an object') end
for key in pairs(record['action']) do
  if not ({['label'] = true, ['url'] = true})[key] then return invalid('unknown field ' .. tostring(key)) end
end
if record['action']['label'] == nil then return invalid('action.label is required') end
if record['action']['label'] ~= nil then
if type(record['action']['label']) ~= 'string' then return invalid('action.label must be a string') end
if chars(record['action']['label']) < 1 or chars(record['action']['label']) > 100 then return invalid('action.label must have 1 to 100 characters') end
end
if record['action']['url'] == nil then return invalid('action.url is required') end
if record['action']['url'] ~= nil then
if type(record['action']['url']) ~= 'string' then return invalid('action.url must be a string') end
if chars(record['action']['url']) < 1 or chars(record['action']['url']) > 2048 then return invalid('action.url must have 1 to 2048 characters') end
end
end
if KEYS[1] ~= 'notifications:{' .. record.user_id .. '}' or KEYS[2] ~= 'notifications:{' .. record.user_id .. '}:unread' or (KEYS[3] and KEYS[3] ~= 'notifications:{' .. record.user_id .. '}:ids') or ARGV[1] ~= 'user:{' .. record.user_id .. '}' then
  return invalid('the keys and the channel must be those of user_id')
end
local publish = 'PUBLISH'
if ARGV[6] == 'SPUBLISH' then publish = 'SPUBLISH'
elseif ARGV[6] and ARGV[6] ~= 'PUBLISH' then return invalid('the last argument must be PUBLISH or SPUBLISH') end
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
if KEYS[3] and redis.call('ZSCORE', KEYS[3], record.id) then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], next_id, 'data', ARGV[2])
local now = ms
local oldest = now - tonumber(ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
if ARGV[5] == '1' then redis.call('ZADD', KEYS[2], now, id) end
for i = 2, #KEYS do
  if i == 3 then redis.call('ZADD', KEYS[3], now, record.id) end
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. oldest)
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[3]) - 1)
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call(publish, ARGV[1], '{"pos":"' .. id .. '","kind":"notification","data":' .. ARGV[2] .. '}')
return id
