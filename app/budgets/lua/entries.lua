-- Shared by the scripts (prepended to each that uses them). A reservation is a field
-- of ``resv`` (with ``_sum`` kept beside) and a member of ``at`` (when it lapses). A
-- call's own is its amount; a lease's is what it still holds, with ``<lease>|e`` (each
-- call's part) and a bitmap ``<resv>:<lease>`` of its calls released, so a call is
-- released once.
local function int(x) return string.format('%d', x) end  -- never "-0" or "1e+14"
local function drop(at, resv, id)
  local amount = tonumber(redis.call('HGET', resv, id) or '0')
  redis.call('HDEL', resv, id, id .. '|e')
  redis.call('HINCRBY', resv, '_sum', int(0 - amount))
  redis.call('ZREM', at, id)
  redis.call('DEL', resv .. ':' .. id)
end
local function cut(at, resv, lease, amount)
  local held = tonumber(redis.call('HGET', resv, lease) or '0')
  if amount >= held then return drop(at, resv, lease) end
  redis.call('HINCRBY', resv, lease, int(0 - amount))
  redis.call('HINCRBY', resv, '_sum', int(0 - amount))
end
local function each(resv, lease)
  return tonumber(redis.call('HGET', resv, lease .. '|e') or '0')
end
local function release(at, resv, id)
  local lease, k = string.match(id, '^(%x+)%.(%d+)$')
  if not lease then
    if redis.call('HEXISTS', resv, id) == 1 then drop(at, resv, id) end
  elseif redis.call('HEXISTS', resv, lease) == 1
      and redis.call('SETBIT', resv .. ':' .. lease, tonumber(k), 1) == 0 then
    cut(at, resv, lease, each(resv, lease))
  end
end
local function close(at, resv, lease, unused)
  if redis.call('HEXISTS', resv, lease) == 1 then
    cut(at, resv, lease, unused * each(resv, lease))
  end
end
-- End a lease's part of the rate-limit windows (admit.lua's count_call): give back
-- its unused requests and tokens, once (a reply lost on the way may bring it twice).
local function close_rate(lease, calls, tokens)
  local hold = '__PREFIX__rl:call:' .. lease
  local value = redis.call('GET', hold)
  if not value then return end
  local held = cjson.decode(value)
  if held[3] == nil or held[4] then return end
  held[4] = 1
  redis.call('SET', hold, cjson.encode(held), 'KEEPTTL')
  for _, window in ipairs(held[3]) do
    if calls > 0 and redis.call('EXISTS', window) == 1 then redis.call('DECRBY', window, calls) end
  end
  for _, window in ipairs(held[2]) do
    if tokens > 0 and redis.call('EXISTS', window) == 1 then redis.call('DECRBY', window, tokens) end
  end
end
