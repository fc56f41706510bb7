-- A process declares a named budget's limits. The first declaration of a limit is recorded
-- with the test that made it; a later one must be the same definition, or it is refused with
-- the recorded one and its test (never a silent winner). Agreeing declarations refresh the
-- records' expiry (the budget's idle time).
-- KEYS[i]  definition key of limit i (all of one budget share a hash tag: one Cluster slot)
-- ARGV[1]  idle_ms, ARGV[2] this test's id, ARGV[2 + i] limit i's definition
-- Returns {} when every limit agrees (then all are recorded), or { i, definition, test } of
-- the first that disagrees (then nothing is written).
local idle = tonumber(ARGV[1])
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if type(raw) == 'string' then
    local nl = string.find(raw, '\n', 1, true)
    if nl then
      local def = string.sub(raw, nl + 1)
      if def ~= ARGV[2 + i] then
        return { i, def, string.sub(raw, 1, nl - 1) }
      end
    end
  end
end
for i = 1, #KEYS do
  -- NX keeps the first declarer's test id; XX refreshes the expiry of a record that exists.
  if not redis.call('SET', KEYS[i], ARGV[2] .. '\n' .. ARGV[2 + i], 'NX', 'PX', idle) then
    redis.call('PEXPIRE', KEYS[i], idle)
  end
end
return {}
