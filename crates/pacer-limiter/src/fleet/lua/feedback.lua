-- What a server's 429/503 means for the fleet: pause the limits' scope until
-- max(existing, now + retry_after) (only ever extended), empty the bucket so traffic resumes at
-- the rate (TAT = max(TAT, pause_until + tau)), and, for adaptive limits, multiply the shared
-- factor by `decrease` at most once per window. Extended pauses are published so every
-- process stops at once.
--
-- KEYS[i]   state key of limit i
-- ARGV[1]   events channel
-- ARGV[2]   retry_after_us (0: none)
-- ARGV[3]   is_429 (0|1)
-- ARGV[4]   keep_ms
-- ARGV[5]   aimd decrease factor, ARGV[6] aimd min factor, ARGV[7] aimd increase
-- ARGV[8]   longest wait between two decreases (us)
-- then per limit i, at 8 + (i-1)*5: name, ceiling, burst, window_us, adaptive (0|1)
--
-- Returns { {pause_us...}, {factor_ppm...} }: each limit's remaining pause and factor.

local now = now_us()
local channel = ARGV[1]
local ra = tonumber(ARGV[2])
local is429 = ARGV[3] == '1'
local keep_ms = tonumber(ARGV[4])
local dec = tonumber(ARGV[5])
local min_factor = tonumber(ARGV[6])
local inc = tonumber(ARGV[7])
local max_gap = tonumber(ARGV[8])
local pauses = {}
local factors = {}
for i = 1, #KEYS do
  local b = 8 + (i - 1) * 5
  local name = ARGV[b + 1]
  local ceiling = tonumber(ARGV[b + 2])
  local burst = tonumber(ARGV[b + 3])
  local window = tonumber(ARGV[b + 4])
  local adaptive = ARGV[b + 5] == '1'
  local s = load_state(KEYS[i], now)
  local changed = false
  if adaptive then
    changed = maybe_increase(s, now, window, inc)
  end
  if is429 then
    s.last429 = now
    changed = true
    if adaptive and now - s.last_dec >= math.min(window, max_gap) then
      s.factor = math.max(min_factor, s.factor * dec)
      s.last_dec = now
      s.ws = now
      s.wsf = s.factor
    end
  end
  local rate = ceiling
  if adaptive then
    rate = ceiling * s.factor
  end
  local tau = (1000000 / rate) * (burst - 1)
  if ra > 0 and now + ra > s.pause then
    s.pause = now + ra
    s.tat = math.max(s.tat, s.pause + tau)
    changed = true
    redis.call('PUBLISH', channel, 'pause ' .. string.format('%.0f', ra) .. ' ' .. name)
  end
  if changed then
    save_state(KEYS[i], s, now, tau, keep_ms)
  end
  pauses[i] = math.floor(math.max(s.pause - now, 0))
  factors[i] = math.floor(s.factor * 1000000 + 0.5)
end
return { pauses, factors }
