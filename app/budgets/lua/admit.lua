-- Admission (app/budgets/counters.py): one round trip that reads the key's record,
-- finds each budget's period, drops lapsed reservations, refuses or reserves.
-- The keys' prefix (PREFIX in counters.py) is put in where it stands, at load.
local now, call, lapses, keep = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local today, y, m, d = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local this_month, last_month = tonumber(ARGV[9]), tonumber(ARGV[10])
local most, share = tonumber(ARGV[11]), tonumber(ARGV[12])
-- A lease asked for ahead of calls (negative ``most``): a lease or nothing at all.
local ahead = most < 0
most = math.abs(most)
local old, unused = ARGV[13], tonumber(ARGV[14])
local tokens, rate_share, sizes = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local unused_tokens = tonumber(ARGV[18])
for i = 19, #ARGV, 2 do close(ARGV[i], ARGV[i + 1], old, unused) end
if old ~= '' then close_rate(old, unused, unused_tokens) end
local record = redis.call('HMGET', KEYS[1], 'revoked', 'rules', 'limits')
-- A key's record is published with its budgets' spend: it decides the call alone.
-- Without it, the key is unknown, or the state is lost (no LOADED marker).
if not record[1] then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
  return {-2}
end
if record[1] == '1' then return {-3} end
-- Rate limits (app/ratelimits): fixed windows of a UTC minute, per scope (the
-- customer's, the key's). A call counts one request and reserves ``tokens``; it is
-- refused when either would pass a limit. The tightest of each is reported back
-- for the response's x-ratelimit-* headers. Far from every limit a lease counts its
-- calls in the windows at once, and a pool of tokens its calls take their estimates
-- from: each never more than 1/rate_share of what a window has left, the pool at most
-- ``sizes`` times this call's estimate per call; its unused part goes back (close_rate).
local minute = math.floor(now / 60)
local reset = (minute + 1) * 60 - now
local limits = record[3] and cjson.decode(record[3]) or {}
local windows, rate, pool = {}, {reset = reset}, nil
for i, lim in ipairs(limits) do
  local base = '__PREFIX__rl:' .. lim[1] .. ':' .. minute
  local req = tonumber(redis.call('GET', base .. ':r') or '0')
  local tok = tonumber(redis.call('GET', base .. ':t') or '0')
  windows[i] = {base .. ':r', base .. ':t', lim[3] ~= cjson.null}
  if lim[2] ~= cjson.null then
    if req + 1 > lim[2] then
      return {-4, cjson.encode({what = 'requests', limit = lim[2], reset = reset})}
    end
    if not rate.requests or lim[2] - req - 1 < rate.requests[2] then
      rate.requests = {lim[2], lim[2] - req - 1}
    end
    most = math.min(most, 1 + math.floor((lim[2] - req - 1) / rate_share))
  end
  if lim[3] ~= cjson.null then
    if tok + tokens > lim[3] then
      return {-4, cjson.encode({what = 'tokens', limit = lim[3], reset = reset})}
    end
    if not rate.tokens or lim[3] - tok - tokens < rate.tokens[2] then
      rate.tokens = {lim[3], lim[3] - tok - tokens}
    end
    local share_left = math.floor((lim[3] - tok - tokens) / rate_share)
    if not pool or share_left < pool then pool = share_left end
  end
end
-- Count ``calls`` calls in the windows. What they reserved is settled by their
-- recorded events (tokens.lua): a single call's from its hold, a lease's calls' from
-- what each event says it reserved, once each.
local function fit(calls)
  if pool then  -- the tokens the lease's other calls may take (none: it is one call)
    pool = math.min(pool, (calls - 1) * tokens * sizes)
    if pool < tokens or tokens <= 0 then calls, pool = 1, 0 end
    rate.pool = pool
  end
  return calls
end
local function count_call(calls)
  local requests, held = {}, {}
  for _, w in ipairs(windows) do
    redis.call('INCRBY', w[1], calls)
    redis.call('EXPIRE', w[1], 120)
    table.insert(requests, w[1])
    if w[3] then
      redis.call('INCRBY', w[2], tokens + (pool or 0))
      redis.call('EXPIRE', w[2], 120)
      table.insert(held, w[2])
    end
  end
  local hold = '__PREFIX__rl:call:' .. call
  if calls > 1 and #windows > 0 then
    redis.call('SET', hold, cjson.encode({tokens, held, requests}), 'EX', 120)
  elseif #held > 0 then
    redis.call('SET', hold, cjson.encode({tokens, held}), 'EX', 120)
  end
  if #limits == 0 then return '' end
  return cjson.encode(rate)
end
local rules = cjson.decode(record[2])
if #rules == 0 then
  most = fit(most)
  if ahead and most < 2 then return {0, 1, ''} end
  return {0, most, count_call(most)}
end
local function start_of(kind, anchor)
  if kind == 'lifetime' then return '20000101' end  -- a credit balance (periods.LIFETIME)
  if kind == 'day' then return today end
  if kind == 'month' then return string.format('%04d%02d01', y, m) end
  local day = math.min(anchor, this_month)
  if d >= day then return string.format('%04d%02d%02d', y, m, day) end
  if m == 1 then return string.format('%04d12%02d', y - 1, math.min(anchor, last_month)) end
  return string.format('%04d%02d%02d', y, m - 1, math.min(anchor, last_month))
end
local keys = {}
for i, rule in ipairs(rules) do
  local base = '__PREFIX__' .. string.format('%d', rule[1]) .. ':' .. start_of(rule[3], rule[6])
  keys[i] = {base .. ':spend', base .. ':resv:at', base .. ':resv', base .. ':avg'}
end
for _, k in ipairs(keys) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k[2], '-inf', now)) do drop(k[2], k[3], id) end
end
-- Far from every hard limit, the call takes a lease: reservations for up to
-- ``most`` calls, never more than 1/share of what is left, admitted by the API
-- process without asking again. Near a limit (or with no mean cost yet): one call.
local estimates, calls = {}, most
for i, k in ipairs(keys) do
  estimates[i] = tonumber(redis.call('GET', k[4]) or '0')
  if rules[i][5] then
    local limit = rules[i][4]
    local spent = tonumber(redis.call('GET', k[1]) or '0')
    local reserved = tonumber(redis.call('HGET', k[3], '_sum') or '0')
    local left = limit - spent - reserved - estimates[i]
    if spent >= limit or left < 0 then return {i, record[2]} end
    if estimates[i] <= 0 then calls = 1 else
      calls = math.min(calls, 1 + math.floor(left / (estimates[i] * share)))
    end
  end
end
calls = fit(calls)
if ahead and calls < 2 then return {0, 1, ''} end
local held = {0, calls, count_call(calls)}
for i, k in ipairs(keys) do
  redis.call('ZADD', k[2], lapses, call)
  redis.call('HSET', k[3], call, int(estimates[i] * calls))
  redis.call('HINCRBY', k[3], '_sum', int(estimates[i] * calls))
  if calls > 1 then
    redis.call('HSET', k[3], call .. '|e', int(estimates[i]))
    redis.call('SETBIT', k[3] .. ':' .. call, calls, 0)
    redis.call('EXPIRE', k[3] .. ':' .. call, keep)
  end
  redis.call('EXPIRE', k[2], keep)
  redis.call('EXPIRE', k[3], keep)
  table.insert(held, k[2])
  table.insert(held, k[3])
end
return held
