-- End a lease: give back what its unused calls still hold, in budgets and in the
-- rate-limit windows (ARGV: the lease, its unused calls, its unused tokens).
for i = 1, #KEYS, 2 do close(KEYS[i], KEYS[i + 1], ARGV[1], tonumber(ARGV[2])) end
close_rate(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 0
