-- A worker says it is alive; returns how many are (heartbeat within stale_ms). When the set of
-- live workers changed (one joined, came back, or went stale), the new count is published, so
-- every worker knows the fleet's size at once (its safe share in safe mode depends on it).
-- A budget in use stays: its definition records live on for the idle time after each beat.
-- On a budget the beat also keeps this test in the budget's registry of tests (lease.lua says
-- the record's format) and removes the tests none of whose processes beat for test_stale_ms.
-- KEYS[1] workers ZSET (score: last heartbeat, ms of this server's clock)
-- KEYS[2..] a budget's definition keys this worker declared (none without a budget), then,
--           when ARGV[6] is given, the budget's registry of tests (HASH) last
-- ARGV[1] worker id, ARGV[2] stale_ms, ARGV[3] key_ttl_ms, ARGV[4] events channel,
-- ARGV[5] the budget's idle_ms; on a budget: ARGV[6] test id, ARGV[7] weight,
-- ARGV[8] test_stale_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[5])
local defs = #KEYS
if ARGV[6] then
  defs = #KEYS - 1
  local reg = KEYS[#KEYS]
  local stale = tonumber(ARGV[8])
  local all = redis.call('HGETALL', reg)
  local mine = nil
  for i = 1, #all, 2 do
    local f = {}
    for w in string.gmatch(all[i + 1], '%S+') do
      f[#f + 1] = w
    end
    local seen = tonumber(f[4])
    if all[i] == ARGV[6] then
      mine = f
    elseif f[1] == 't1' and (#f ~= 7 or not seen or now - seen > stale) then
      -- (a record of another format is a newer pacer's: left to it and to the key's expiry)
      redis.call('HDEL', reg, all[i])
    end
  end
  local rec
  if mine and mine[1] == 't1' and #mine == 7 and tonumber(mine[3]) and tonumber(mine[5])
      and tonumber(mine[6]) and tonumber(mine[7]) then
    rec = string.format('t1 %s %s %.0f %s %s %s', ARGV[7], mine[3], now, mine[5], mine[6],
      mine[7])
  else
    rec = string.format('t1 %s 0 %.0f 0 %.0f 0', ARGV[7], now, now)
  end
  redis.call('HSET', reg, ARGV[6], rec)
  redis.call('PEXPIRE', reg, idle)
end
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local gone = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
for i = 2, defs do
  redis.call('PEXPIRE', KEYS[i], idle)
end
local n = redis.call('ZCARD', KEYS[1])
if added > 0 or gone > 0 then
  redis.call('PUBLISH', ARGV[4], 'workers ' .. n)
end
return n
