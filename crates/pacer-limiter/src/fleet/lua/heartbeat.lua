-- A worker says it is alive; returns how many are (heartbeat within stale_ms). When the set of
-- live workers changed (one joined, came back, or went stale), the new count is published, so
-- every worker knows the fleet's size at once (its safe share in safe mode depends on it).
-- A budget in use stays: its definition records live on for the idle time after each beat.
-- KEYS[1] workers ZSET (score: last heartbeat, ms of this server's clock)
-- KEYS[2..] a budget's definition keys this worker declared (none without a budget)
-- ARGV[1] worker id, ARGV[2] stale_ms, ARGV[3] key_ttl_ms, ARGV[4] events channel,
-- ARGV[5] the budget's idle_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local gone = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
for i = 2, #KEYS do
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5]))
end
local n = redis.call('ZCARD', KEYS[1])
if added > 0 or gone > 0 then
  redis.call('PUBLISH', ARGV[4], 'workers ' .. n)
end
return n
