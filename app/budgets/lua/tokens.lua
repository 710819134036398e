-- Settle what calls reserved against tokens-per-minute limits (admit.lua), each
-- once: ARGV holds pairs of a call id and the tokens its recorded event used. The
-- window the call was counted in moves by the difference; a window already past
-- (its key gone) is left alone.
for i = 1, #ARGV, 2 do
  local hold = '__PREFIX__rl:call:' .. ARGV[i]
  local value = redis.call('GET', hold)
  if value then
    redis.call('DEL', hold)
    local held = cjson.decode(value)
    local change = tonumber(ARGV[i + 1]) - held[1]
    for _, window in ipairs(held[2]) do
      if redis.call('EXISTS', window) == 1 then redis.call('INCRBY', window, change) end
    end
  end
end
return 0
