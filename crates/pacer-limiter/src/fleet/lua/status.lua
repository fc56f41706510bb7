-- Everything a budget's status shows, read at one instant of this Redis server's clock.
-- KEYS[1] <tag>:workers (zset), KEYS[2] <tag>:last429 (hash), KEYS[3] <tag>:granted (hash),
-- KEYS[4 .. 3+n] the limits' state keys, KEYS[4+n .. 3+2n] their definition keys,
-- KEYS[4+2n .. 3+3n] what the server's headers said of them (hashes, fleet/server.rs)
-- ARGV[1] n
-- Returns { now_us, workers (id, score...), last429 (field, value...), granted (name, n...),
--           { state or false ... }, { definition or false ... }, { {field, value...} ... } }
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local states = {}
local defs = {}
local servers = {}
for i = 1, n do
  states[i] = redis.call('GET', KEYS[3 + i])
  defs[i] = redis.call('GET', KEYS[3 + n + i])
  servers[i] = redis.call('HGETALL', KEYS[3 + 2 * n + i])
end
return { string.format('%.0f', now_us),
  redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  states, defs, servers }
