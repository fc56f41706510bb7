-- The last 429 a process of the fleet saw, for the budget's status (crates/pacer-operator):
-- which limits the refused request matched, when (this Redis server's clock, ms), the
-- Retry-After it carried and the process. Written at most once per second per process.
-- KEYS[1]  <tag>:last429 (hash)
-- ARGV[1]  limits (comma-separated names), ARGV[2] retry_after_ms (0: none), ARGV[3] process,
-- ARGV[4]  keep_ms (how long the record outlives its last write), ARGV[5] the limit the
--          server stated in that answer ('': none)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'limits', ARGV[1], 'at_ms', string.format('%.0f', now_ms),
  'retry_after_ms', ARGV[2], 'process', ARGV[3], 'server_limit', ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
