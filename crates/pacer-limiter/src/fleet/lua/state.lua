-- Shared by the limiter scripts (prepended to lease.lua, feedback.lua and learn.lua at compile
-- time).
--
-- One string key per limit holds its whole state, so a grant costs one GET and one SET:
--   "v1 tat pause factor granted 0 0 0 sustained"
-- Times are microseconds of this Redis server's clock (TIME). `factor` (in (0, 1]) is the
-- share of the ceiling an adaptive limit is paced at and `sustained` the share measured to pass
-- (0: not measured), both written by the fleet's learner (learn.lua); 1 and 0 otherwise.
-- `granted` counts the slots lease.lua ever granted on the limit (every process of the fleet or
-- budget): a lease answers its count before its own slots, so a process knows the fleet's
-- cumulative schedule at its slots' times and can tell the fleet's own use from others' in
-- what the server says (fleet/server.rs). It was the retired AIMD's "last decrease", written
-- as 0 by older pacers: a count restarting at 0 only resets that estimate.
-- The three zeros are retired fields (the fleet's AIMD before the learner: window start, its
-- factor, last 429): they are kept, written as 0 and never read, so the layout stays the one
-- other readers (fleet/status.rs) and older pacers parse.
-- A key that does not parse is treated as a fresh limit (capacity lost, never excess: a fresh
-- GCRA admits at most its burst at once).

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function load_state(key, now)
  local s = { tat = 0, pause = 0, factor = 1, sustained = 0, granted = 0 }
  local raw = redis.call('GET', key)
  if type(raw) ~= 'string' then
    return s
  end
  local f = {}
  for w in string.gmatch(raw, '%S+') do
    f[#f + 1] = w
  end
  if f[1] ~= 'v1' or #f ~= 9 then
    return s
  end
  local at = { 2, 3, 4, 9 }
  local v = {}
  for i = 1, 4 do
    v[i] = tonumber(f[at[i]])
    if v[i] == nil or v[i] ~= v[i] then
      return s
    end
  end
  s.tat, s.pause, s.factor, s.sustained = v[1], v[2], v[3], v[4]
  local g = tonumber(f[5])
  if g and g >= 0 and g < 2 ^ 52 then
    s.granted = math.floor(g)
  end
  if not (s.factor > 0 and s.factor <= 1) then
    s.factor = 1
  end
  if not (s.sustained >= 0 and s.sustained <= 1) then
    s.sustained = 0
  end
  return s
end

-- keep: how long an idle limit's state outlives its last reservation or pause (ms).
local function save_state(key, s, now, tau, keep_ms)
  local ahead = math.max(s.tat - now, s.pause - now, 0) + tau
  local ttl = math.floor(ahead / 1000) + keep_ms
  local raw = string.format('v1 %.3f %.0f %.6f %.0f 0 0 0 %.6f', s.tat, s.pause, s.factor,
    s.granted, s.sustained)
  redis.call('SET', key, raw, 'PX', ttl)
end
