-- Settle what calls reserved against tokens-per-minute limits (admit.lua), each
-- once: ARGV holds triples of a call id, the tokens its recorded event used, and
-- what the call reserved. The windows the call was counted in move by the
-- difference; a window already past (its key gone) is left alone. A single call's
-- reservation is read from its hold; a lease's call (``<lease>.<n>``) carries its
-- own (it was taken from the lease's tokens by the API process), and a bitmap
-- beside the lease's hold settles each once.
for i = 1, #ARGV, 3 do
  local call, used = ARGV[i], tonumber(ARGV[i + 1])
  local lease, n = string.match(call, '^(%x+)%.(%d+)$')
  local hold = '__PREFIX__rl:call:' .. (lease or call)
  local value = redis.call('GET', hold)
  local change = nil
  if value and lease then
    if redis.call('SETBIT', hold .. ':s', tonumber(n), 1) == 0 then
      redis.call('EXPIRE', hold .. ':s', 120)
      change = used - tonumber(ARGV[i + 2])
    end
  elseif value then
    redis.call('DEL', hold)
    change = used - cjson.decode(value)[1]
  end
  if change then
    for _, window in ipairs(cjson.decode(value)[2]) do
      if redis.call('EXISTS', window) == 1 then redis.call('INCRBY', window, change) end
    end
  end
end
return 0
