-- A lease: up to `want` tokens of every limit in KEYS, granted together (each token takes all
-- the limits or none), as slots of the fleet's GCRA schedule on this server's clock.
--
-- KEYS[i]   state key of limit i (all of one test share a hash tag: one Cluster slot)
-- ARGV[1]   want: tokens wanted (>= 1)
-- ARGV[2]   max_ahead_us: grant no slot later than now + this
-- ARGV[3]   keep_ms: how long an idle limit's state outlives its last slot
-- ARGV[4]   aimd_increase: share of the ceiling added after a window without 429
-- then per limit i, at 4 + (i-1)*5: ceiling (tokens/s), burst, window_us, adaptive (0|1),
--           debt: tokens this worker sent in safe mode while Redis was gone (charged first)
--
-- Returns { granted, wait_us, {pause_us...}, {factor_ppm...}, {sustained_ppm...}, {offset_us...} }
--   offset_us: each granted slot as a delay from now (durations, never absolute times)
--   wait_us:   nothing granted: how long until a slot fits in max_ahead (or a pause ends)
--   pause_us:  per limit, how long its Retry-After pause still holds (then nothing is granted)

local now = now_us()
local want = tonumber(ARGV[1])
local max_ahead = tonumber(ARGV[2])
local keep_ms = tonumber(ARGV[3])
local inc = tonumber(ARGV[4])
local n = #KEYS
local st = {}
local pauses = {}
local paused = 0
local changed = false
for i = 1, n do
  local b = 4 + (i - 1) * 5
  local ceiling = tonumber(ARGV[b + 1])
  local burst = tonumber(ARGV[b + 2])
  local window = tonumber(ARGV[b + 3])
  local adaptive = ARGV[b + 4] == '1'
  local debt = tonumber(ARGV[b + 5])
  local s = load_state(KEYS[i], now)
  if adaptive and maybe_increase(s, now, window, inc) then
    changed = true
  end
  local rate = ceiling
  if adaptive then
    rate = ceiling * s.factor
  end
  s.t = 1000000 / rate
  s.tau = s.t * (burst - 1)
  if debt > 0 then
    s.tat = math.max(s.tat, now) + debt * s.t
    changed = true
  end
  pauses[i] = 0
  if s.pause > now then
    pauses[i] = math.floor(s.pause - now)
    paused = math.max(paused, pauses[i])
  end
  st[i] = s
end

local factors = {}
local sustained = {}
for i = 1, n do
  factors[i] = math.floor(st[i].factor * 1000000 + 0.5)
  sustained[i] = math.floor(st[i].sustained * 1000000 + 0.5)
end

local offsets = {}
local granted = 0
local wait = paused
if paused == 0 then
  while granted < want do
    local at = now
    for i = 1, n do
      at = math.max(at, st[i].tat - st[i].tau)
    end
    if at - now > max_ahead then
      wait = at - now - max_ahead
      break
    end
    for i = 1, n do
      st[i].tat = math.max(st[i].tat, at) + st[i].t
    end
    granted = granted + 1
    offsets[granted] = math.floor(at - now)
  end
end

if granted > 0 or changed then
  for i = 1, n do
    save_state(KEYS[i], st[i], now, st[i].tau, keep_ms)
  end
end
return { granted, math.ceil(wait), pauses, factors, sustained, offsets }
