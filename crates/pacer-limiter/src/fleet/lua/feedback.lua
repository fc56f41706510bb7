-- What a server's 429/503 with a pause means for the fleet: pause the limits' scope until
-- max(existing, now + retry_after) (only ever extended), and empty the bucket so traffic
-- resumes at the rate (TAT = max(TAT, pause_until + tau)). Extended pauses are published so
-- every process stops at once. (An adaptive limit's rate is the learner's: learn.lua.)
--
-- KEYS[i]   state key of limit i
-- ARGV[1]   events channel
-- ARGV[2]   retry_after_us (> 0)
-- ARGV[3]   keep_ms
-- then per limit i, at 3 + (i-1)*4: name, ceiling, burst, adaptive (0|1)
--
-- Returns { pause_us... }: each limit's remaining pause.

local now = now_us()
local channel = ARGV[1]
local ra = tonumber(ARGV[2])
local keep_ms = tonumber(ARGV[3])
local pauses = {}
for i = 1, #KEYS do
  local b = 3 + (i - 1) * 4
  local name = ARGV[b + 1]
  local ceiling = tonumber(ARGV[b + 2])
  local burst = tonumber(ARGV[b + 3])
  local adaptive = ARGV[b + 4] == '1'
  local s = load_state(KEYS[i], now)
  local rate = ceiling
  if adaptive then
    rate = ceiling * s.factor
  end
  local tau = (1000000 / rate) * (burst - 1)
  if ra > 0 and now + ra > s.pause then
    s.pause = now + ra
    s.tat = math.max(s.tat, s.pause + tau)
    redis.call('PUBLISH', channel, 'pause ' .. string.format('%.0f', ra) .. ' ' .. name)
    save_state(KEYS[i], s, now, tau, keep_ms)
  end
  pauses[i] = math.floor(math.max(s.pause - now, 0))
end
return pauses
