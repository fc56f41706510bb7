-- A lease: up to `want` tokens of every limit in KEYS, granted together (each token takes all
-- the limits or none), as slots of the fleet's GCRA schedule on this server's clock.
--
-- KEYS[i]   state key of limit i (all of one test share a hash tag: one Cluster slot)
-- ARGV[1]   want: tokens wanted (>= 1)
-- ARGV[2]   max_ahead_us: grant no slot later than now + this
-- ARGV[3]   keep_ms: how long an idle limit's state outlives its last slot
-- then per limit i, at 3 + (i-1)*5: ceiling (tokens/s), burst, window_us, adaptive (0|1:
--           paced at the learned share of the ceiling, learn.lua),
--           debt: tokens this worker sent in safe mode while Redis was gone (charged first)
--
-- Returns { granted, wait_us, {pause_us...}, {factor_ppm...}, {sustained_ppm...}, {offset_us...},
--           {before...} }
--   offset_us: each granted slot as a delay from now (durations, never absolute times)
--   before:    per limit, the slots the fleet was granted on it before this lease's (its state's
--              `granted` count: this lease's slots are the next ones of the fleet's schedule)
--   wait_us:   nothing granted: how long until a slot fits in max_ahead (or a pause ends)
--   pause_us:  per limit, how long its Retry-After pause still holds (then nothing is granted)
--
-- Fair shares between the tests of a budget (see fair_begin below) add, when the last ARGV is
-- 'fair1': KEYS[n + i] this test's share key of limit i, KEYS[2n + 1] the budget's registry.

-- Fair shares between the tests of a budget (docs/rate-limiting.md, "Weights and fair shares").
-- Each test may take slots of the budget's schedule only as fast as its share of each limit:
-- share = weight / (its weight + the weights of the other tests with a backlog), so a test
-- alone, or next to tests that need less than their shares, may use the whole limit (work-
-- conserving), and tests with a backlog split it by weight. A test's share is a GCRA of its own
-- per limit (KEYS[n + i]: "tat" in us) at limit rate x share, with a slack of a lease span; it
-- is checked at the slot the budget's schedule offers and never moves that schedule, so no
-- capacity is skipped. A test has a backlog while it wanted more than it got: its share
-- stopped a lease, the lease was short, or its process was hungry (many requests waiting)
-- while it got at least hungry_share of an equal split of the limit between the active tests
-- (a test served below that is not held back by the others: its requests wait only behind
-- their leases), within the last backlog_hold_ms.
-- Registry (HASH test id -> "t1 weight backlog_ms seen_ms rate win_start_ms win_count", ms of
-- this server's clock; rate: tokens granted to the test per second over its last whole
-- FAIR_RATE_WINDOW_MS), refreshed here and by heartbeat.lua, which expires stale tests.
-- The tail of ARGV: test id, weight, hungry (0|1), backlog_hold_ms, slack_us, share_keep_ms,
-- hungry_share, 'fair1'.
local FAIR_TAIL = 8
-- The shortest part of a rate window that says how fast a test is served now.
local FAIR_RATE_MIN_MS = 250
local FAIR_RATE_WINDOW_MS = 1000

local function fair_record(raw)
  local r = { weight = 1, backlog = 0, seen = 0, rate = 0, ws = 0, wc = 0 }
  if type(raw) ~= 'string' then
    return r
  end
  local f = {}
  for w in string.gmatch(raw, '%S+') do
    f[#f + 1] = w
  end
  if f[1] ~= 't1' or #f ~= 7 then
    return r
  end
  local v = {}
  for i = 2, 7 do
    v[i - 1] = tonumber(f[i])
    if v[i - 1] == nil then
      return r
    end
  end
  r.weight, r.backlog, r.seen, r.rate, r.ws, r.wc = v[1], v[2], v[3], v[4], v[5], v[6]
  if not (r.weight > 0) then
    r.weight = 1
  end
  return r
end

-- nil without a budget; else the fair-share state of this lease (n: the limits).
local function fair_begin()
  if #ARGV <= FAIR_TAIL or ARGV[#ARGV] ~= 'fair1' or #KEYS < 3 or #KEYS % 2 ~= 1 then
    return nil
  end
  local a = #ARGV - FAIR_TAIL
  local f = { test = ARGV[a + 1], weight = tonumber(ARGV[a + 2]), hungry = ARGV[a + 3] == '1',
              hold = tonumber(ARGV[a + 4]), slack = tonumber(ARGV[a + 5]),
              keep = tonumber(ARGV[a + 6]), hungry_share = tonumber(ARGV[a + 7]),
              n = (#KEYS - 1) / 2, limited = false }
  if not (f.weight and f.weight > 0) then
    f.weight = 1
  end
  f.registry = KEYS[#KEYS]
  return f
end

-- This test's share now, and its share keys' states (st: the limits' GCRA states).
local function fair_load(f, now, st)
  local now_ms = math.floor(now / 1000)
  local all = redis.call('HGETALL', f.registry)
  local others = 0
  f.active = 1
  for i = 1, #all, 2 do
    local r = fair_record(all[i + 1])
    if all[i] == f.test then
      f.rec = r
    elseif now_ms - r.seen <= f.hold then
      f.active = f.active + 1
      if now_ms - r.backlog <= f.hold then
        others = others + r.weight
      end
    end
  end
  f.rec = f.rec or fair_record(nil)
  f.share = f.weight / (f.weight + others)
  f.now_ms = now_ms
  f.tat, f.t, f.tau = {}, {}, {}
  f.rate = math.huge
  for i = 1, f.n do
    f.rate = math.min(f.rate, 1000000 / st[i].t)
    f.tat[i] = tonumber(redis.call('GET', KEYS[f.n + i])) or 0
    f.t[i] = st[i].t / f.share
    f.tau[i] = math.max(st[i].tau, f.slack)
  end
end

-- When this test's share allows a slot at `at`: nil if it does now.
local function fair_blocks(f, at)
  local next_at = nil
  for i = 1, f.n do
    local ok_at = f.tat[i] - f.tau[i]
    if ok_at > at then
      next_at = math.max(next_at or ok_at, ok_at)
    end
  end
  return next_at
end

local function fair_take(f, at)
  for i = 1, f.n do
    f.tat[i] = math.max(f.tat[i], at) + f.t[i]
  end
end

local function fair_save(f, now, want, granted)
  for i = 1, f.n do
    local ttl = math.floor(math.max(f.tat[i] - now, 0) / 1000 + f.tau[i] / 1000) + f.keep
    redis.call('SET', KEYS[f.n + i], string.format('%.3f', f.tat[i]), 'PX', ttl)
  end
  local r = f.rec
  r.weight = f.weight
  r.seen = f.now_ms
  local el = f.now_ms - r.ws
  if el >= FAIR_RATE_WINDOW_MS then
    r.rate = r.wc * 1000 / el
    r.ws = f.now_ms
    r.wc = 0
  end
  r.wc = r.wc + granted
  local served = r.rate
  if f.now_ms - r.ws >= FAIR_RATE_MIN_MS then
    served = math.max(served, r.wc * 1000 / (f.now_ms - r.ws))
  end
  local held_back = f.hungry and served >= f.hungry_share * f.rate / f.active
  if f.limited or held_back or granted < want then
    r.backlog = f.now_ms
  end
  redis.call('HSET', f.registry, f.test, string.format('t1 %.6f %.0f %.0f %.3f %.0f %.0f',
    r.weight, r.backlog, r.seen, r.rate, r.ws, r.wc))
end

local now = now_us()
local want = tonumber(ARGV[1])
local max_ahead = tonumber(ARGV[2])
local keep_ms = tonumber(ARGV[3])
local n = #KEYS
local fair = fair_begin()
if fair then
  n = fair.n
end
local st = {}
local pauses = {}
local paused = 0
local changed = false
for i = 1, n do
  local b = 3 + (i - 1) * 5
  local ceiling = tonumber(ARGV[b + 1])
  local burst = tonumber(ARGV[b + 2])
  local adaptive = ARGV[b + 4] == '1'
  local debt = tonumber(ARGV[b + 5])
  local s = load_state(KEYS[i], now)
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
local before = {}
for i = 1, n do
  before[i] = st[i].granted
end
if fair and paused == 0 and want > 0 then
  fair_load(fair, now, st)
end
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
    local share_at = fair and fair_blocks(fair, at)
    if share_at then
      fair.limited = true
      wait = share_at - now
      break
    end
    if fair then
      fair_take(fair, at)
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
    st[i].granted = st[i].granted + granted
    save_state(KEYS[i], st[i], now, st[i].tau, keep_ms)
  end
end
if fair and fair.rec then
  fair_save(fair, now, want, granted)
  redis.call('PEXPIRE', fair.registry, keep_ms)
end
return { granted, math.ceil(wait), pauses, factors, sustained, offsets, before }
