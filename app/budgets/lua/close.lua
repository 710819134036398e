-- End a lease: give back what its unused calls still hold.
for i = 1, #KEYS, 2 do close(KEYS[i], KEYS[i + 1], ARGV[1], tonumber(ARGV[2])) end
return 0
