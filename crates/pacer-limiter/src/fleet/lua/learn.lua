-- The fleet's learner for one adaptive limit (the learning itself is pacer_limiter::learn, in
-- Rust; this script keeps its inputs and its state). Every process calls it every ~100 ms:
--
-- 1. it adds what the process saw since its last call (answers accepted and refused, a
--    server's Retry-After pause, a rate the server stated) to the limit's counters;
-- 2. one process at a time is the learner: the owner, until its turn lapses (a process that
--    died stops renewing it, and the next caller takes over). Any other caller stops here;
-- 3. the learner's call stores the learner it ran (its encoded text) if it is the one stored
--    last (the version it read), and then the rate it decided goes into the limit's state
--    (`factor`, `sustained`, and a pause on a cut, published like a Retry-After), so every
--    lease from now on is granted at it;
-- 4. the counters are drained (each answer is counted once: it is added in one call and taken
--    in one) and returned with Redis' clock and, when the caller's learner is not the one
--    stored (it just took over, or another process stored one since), the stored one to
--    continue from.
--
-- KEYS[1]  the learner's hash: owner, until, version, blob, acc, ref, paused, stated
-- KEYS[2]  the limit's state key (state.lua)
-- ARGV[1]  this process's id             ARGV[2]  how long a turn lasts (ms)
-- ARGV[3]  accepted   ARGV[4] refused    ARGV[5]  paused (0|1)   ARGV[6] stated rate ('' none)
-- ARGV[7]  the version the caller's learner continues (-1: none)
-- ARGV[8]  the caller's learner, encoded ('' none)
-- ARGV[9]  its rate as a share of the ceiling   ARGV[10] its sustained share (0: none)
-- ARGV[11] pause_us (a cut's pause; 0 none)   ARGV[12] events channel   ARGV[13] limit name
-- ARGV[14] keep_ms    ARGV[15] ceiling (tokens/s)   ARGV[16] burst
--
-- Returns { learner (0|1), now_us, version, accepted, refused, paused, stated, in_step (0|1),
--           stored }
--   in_step: the caller's learner is the one stored last (it continues with it)
--   stored:  otherwise the stored learner ('' if none): the caller continues from it

local now = now_us()
local k = KEYS[1]
local me = ARGV[1]
local turn_us = tonumber(ARGV[2]) * 1000
local acc = tonumber(ARGV[3])
local ref = tonumber(ARGV[4])
local keep_ms = tonumber(ARGV[14])
if acc > 0 then
  redis.call('HINCRBY', k, 'acc', acc)
end
if ref > 0 then
  redis.call('HINCRBY', k, 'ref', ref)
end
if ARGV[5] == '1' then
  redis.call('HSET', k, 'paused', '1')
end
if ARGV[6] ~= '' then
  redis.call('HSET', k, 'stated', ARGV[6])
end
redis.call('PEXPIRE', k, keep_ms)

local owner = redis.call('HGET', k, 'owner')
local untl = tonumber(redis.call('HGET', k, 'until')) or 0
if type(owner) == 'string' and owner ~= me and untl > now then
  return { 0, now, 0, 0, 0, 0, '', 0, '' }
end
redis.call('HSET', k, 'owner', me, 'until', string.format('%.0f', now + turn_us))

local version = tonumber(redis.call('HGET', k, 'version')) or 0
local in_step = tonumber(ARGV[7]) == version
if in_step and ARGV[8] ~= '' then
  version = version + 1
  redis.call('HSET', k, 'version', version, 'blob', ARGV[8])
  local factor = tonumber(ARGV[9])
  local sustained = tonumber(ARGV[10])
  local pause = tonumber(ARGV[11])
  local ceiling = tonumber(ARGV[15])
  local burst = tonumber(ARGV[16])
  local s = load_state(KEYS[2], now)
  if factor > 0 and factor <= 1 then
    s.factor = factor
  end
  if sustained >= 0 and sustained <= 1 then
    s.sustained = sustained
  end
  local tau = (1000000 / (ceiling * s.factor)) * (burst - 1)
  if pause > 0 and now + pause > s.pause then
    s.pause = now + pause
    s.tat = math.max(s.tat, s.pause + tau)
    redis.call('PUBLISH', ARGV[12], 'pause ' .. string.format('%.0f', pause) .. ' ' .. ARGV[13])
  end
  save_state(KEYS[2], s, now, tau, keep_ms)
end

local t = redis.call('HMGET', k, 'acc', 'ref', 'paused', 'stated')
redis.call('HDEL', k, 'acc', 'ref', 'paused', 'stated')
local stored = ''
if not in_step then
  stored = redis.call('HGET', k, 'blob')
  if type(stored) ~= 'string' then
    stored = ''
  end
end
local step = 0
if in_step then
  step = 1
end
return { 1, now, version, tonumber(t[1]) or 0, tonumber(t[2]) or 0, tonumber(t[3]) or 0,
  t[4] or '', step, stored }
