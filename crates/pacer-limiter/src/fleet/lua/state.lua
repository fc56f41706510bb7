-- Shared by the limiter scripts (prepended to lease.lua and feedback.lua at compile time).
--
-- One string key per limit holds its whole state, so a grant costs one GET and one SET:
--   "v1 tat pause factor last_decrease window_start window_start_factor last_429 sustained"
-- Times are microseconds of this Redis server's clock (TIME); factors are in (0, 1].
-- A key that does not parse is treated as a fresh limit (capacity lost, never excess: a fresh
-- GCRA admits at most its burst at once).

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function load_state(key, now)
  local s = { tat = 0, pause = 0, factor = 1, last_dec = 0, ws = now, wsf = 1, last429 = 0,
              sustained = 0 }
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
  local v = {}
  for i = 2, 9 do
    v[i - 1] = tonumber(f[i])
    if v[i - 1] == nil then
      return s
    end
  end
  s.tat, s.pause, s.factor, s.last_dec = v[1], v[2], v[3], v[4]
  s.ws, s.wsf, s.last429, s.sustained = v[5], v[6], v[7], v[8]
  if not (s.factor > 0 and s.factor <= 1) then
    s.factor = 1
  end
  return s
end

-- keep: how long an idle limit's state outlives its last reservation or pause (ms).
local function save_state(key, s, now, tau, keep_ms)
  local ahead = math.max(s.tat - now, s.pause - now, 0) + tau
  local ttl = math.floor(ahead / 1000) + keep_ms
  local raw = string.format('v1 %.3f %.0f %.6f %.0f %.0f %.6f %.0f %.6f', s.tat, s.pause,
    s.factor, s.last_dec, s.ws, s.wsf, s.last429, s.sustained)
  redis.call('SET', key, raw, 'PX', ttl)
end

-- AIMD, additive half: a whole window without a 429 raises the factor by `inc` (of the
-- ceiling) and records the factor that window held as sustained.
local function maybe_increase(s, now, window, inc)
  if now - s.ws >= window then
    if s.last429 < s.ws then
      s.sustained = math.max(s.sustained, math.min(s.wsf, s.factor))
      s.factor = math.min(1, s.factor + inc)
    end
    s.ws = now
    s.wsf = s.factor
    return true
  end
  return false
end
