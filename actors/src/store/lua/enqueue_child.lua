-- Queues a child run once, under the rules of enqueue.lua (see store/runs.rs
-- `enqueue_child`): a parent that resumes and starts the same child again
-- finds it and queues nothing; a new child counts as an active run of its
-- user and is refused, writing nothing, when the user has the most active
-- runs allowed. The rate limit is not applied: a child is part of a run
-- that was admitted already.
-- KEYS: 1 run hash, 2 user's runs index, 3 request stream, 4 user's active
--       runs, 5 user's ended runs, 6 user's readable results.
-- ARGV: 1 max active runs, 2 run id, 3 index member (creation time and run
--       id), 4 request field for the run id, 5.. the run hash's field/value
--       pairs.
-- Returns 'accepted', 'exists' or 'quota_exceeded'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[1]) then
  return 'quota_exceeded'
end
local h = {}
for i = 5, #ARGV do h[#h + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(h))
redis.call('ZADD', KEYS[2], 0, ARGV[3])
-- As in enqueue.lua: the user holds a live run again.
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
redis.call('XADD', KEYS[3], '*', ARGV[4], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return 'accepted'
