-- A worker leaves the test. The last one (no other heartbeat within stale_ms) deletes every key
-- of the test, so nothing is left behind; expiries are the safety net when none leaves cleanly.
-- KEYS[1] workers ZSET, KEYS[2..] every other key of the test
-- ARGV[1] worker id, ARGV[2] stale_ms, ARGV[3] events channel
-- Returns the number of workers still registered (0: this one cleaned up).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', unpack(KEYS))
else
  redis.call('PUBLISH', ARGV[3], 'workers ' .. left)
end
return left
