-- The refresher stores the new token, releases its lock (only if it still holds it) and tells
-- the waiting workers. The token value never leaves this script in a reply or a message.
-- KEYS[1] token key, KEYS[2] lock key
-- ARGV[1] token, ARGV[2] ttl_ms, ARGV[3] lock holder id, ARGV[4] events channel, ARGV[5] credential
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[4], 'token ' .. ARGV[5])
return 1
