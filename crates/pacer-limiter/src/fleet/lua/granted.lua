-- Slots granted by leases, counted per limit, for the budget's status (its rate used: the
-- operator reads the count twice and divides by the time between). Each process adds what it
-- was granted at most once per second.
-- KEYS[1]  <tag>:granted (hash: limit name -> slots granted since the key was created)
-- ARGV[1]  keep_ms, then pairs: limit name, slots
for i = 2, #ARGV - 1, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
