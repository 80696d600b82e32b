-- The run owner's decision on a waiting approval: taken once, while the
-- approval waits and before its deadline; anything else changes nothing.
-- KEYS: 1 wait record.
-- ARGV: 1 the decision (the node's output, JSON), 2 settled channel,
--       3 wait id. A final record expires with its run.
-- Returns {'ok'} or {'missing'} or {'not_waiting', state}.
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_ms')
if not f[1] then return {'missing'} end
if f[1] ~= 'waiting' then return {'not_waiting', f[1]} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(f[2]) or 0
local state = 'completed'
if deadline > 0 and now >= deadline then state = 'timed_out' end
if state == 'completed' then redis.call('HSET', KEYS[1], 'output', ARGV[1]) end
redis.call('HSET', KEYS[1], 'state', state)
redis.call('PUBLISH', ARGV[2], ARGV[3])
if state == 'completed' then return {'ok'} end
return {'not_waiting', state}
