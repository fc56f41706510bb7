-- Delete KEYS[1] only if it still holds ARGV[1] (a token that failed with 401, or a lock this
-- worker holds). Returns 1 when deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
