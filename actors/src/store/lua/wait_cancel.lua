-- Cancels a wait whose run ended: a queued task leaves its queue, and its
-- worker's next heartbeat or completion is refused.
-- KEYS: 1 wait record, 2 the user's task queue (tasks; else the record).
-- ARGV: 1 seconds a final record is kept, 2 wait id.
-- Returns 1 if the wait was cancelled, 0 if it had already ended.
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'queued' or s == 'claimed' or s == 'waiting' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('HDEL', KEYS[1], 'token')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  if s == 'queued' then redis.call('ZREM', KEYS[2], ARGV[2]) end
  return 1
end
return 0
