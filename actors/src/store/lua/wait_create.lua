-- Creates one attempt of a waiting node (task, approval, signal) unless it
-- exists (a resumed run relaunching the same attempt finds it as it was),
-- and lists it among its run's waits, which the commit that ends the run
-- cancels and expires. Never on a run that has ended (or is gone): that
-- wait would outlive it. A task is also queued on its user's queue and
-- announced as claimable.
-- KEYS: 1 wait record, 2 the user's task queue (tasks; else the record again),
--       3 run hash, 4 the run's waits.
-- ARGV: 1 kind, 2 user, 3 run id, 4 node id, 5 attempt, 6 queue or '',
--       7 signal name or '', 8 task input JSON, 9 timeout ms (0: none),
--       10 lease ms, 11 wait id, 12 ready channel, 13 ready payload.
-- Returns {created 1|0, state, created_ms, deadline_ms (0: none)}, or
-- {-1, 'ended', 0, 0} when the run has ended.
local st = redis.call('HGET', KEYS[3], 'status')
if not st or st == 'completed' or st == 'failed' or st == 'cancelled' then
  return {-1, 'ended', 0, 0}
end
local cur = redis.call('HMGET', KEYS[1], 'state', 'created_ms', 'deadline_ms')
if cur[1] then
  return {0, cur[1], tonumber(cur[2]) or 0, tonumber(cur[3]) or 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout = tonumber(ARGV[9])
local deadline = 0
if timeout > 0 then deadline = now + timeout end
local state = 'waiting'
if ARGV[1] == 'task' then state = 'queued' end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'user', ARGV[2], 'run_id', ARGV[3],
  'node_id', ARGV[4], 'attempt', ARGV[5], 'state', state, 'created_ms', now,
  'deadline_ms', deadline, 'progress_n', 0)
redis.call('SADD', KEYS[4], ARGV[11])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'signal', ARGV[7]) end
if ARGV[1] == 'task' then
  redis.call('HSET', KEYS[1], 'queue', ARGV[6], 'input', ARGV[8], 'lease_ms', ARGV[10])
  redis.call('ZADD', KEYS[2], now, ARGV[11])
  redis.call('PUBLISH', ARGV[12], ARGV[13])
end
return {1, state, now, deadline}
