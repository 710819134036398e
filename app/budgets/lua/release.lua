-- Release recorded (or unmetered) calls' reservations, each once.
for i = 1, #KEYS, 2 do
  for _, id in ipairs(ARGV) do release(KEYS[i], KEYS[i + 1], id) end
end
return 0
