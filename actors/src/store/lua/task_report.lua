-- A worker's report on a claimed task: a heartbeat (extends the lease, may
-- carry progress), a completion or a failure. Only the current token of a
-- claimed task whose lease has not lapsed is accepted; anything else
-- changes nothing (a lapsed lease is recorded as expired first).
-- KEYS: 1 wait record.
-- ARGV: 1 user, 2 token, 3 what ('heartbeat', 'completed', 'failed'),
--       4 output JSON (completed) or error (failed), 5 retryable '1'|'0',
--       6 has progress '1'|'0', 7 progress, 8 has message '1'|'0', 9 message,
--       10 settled channel, 11 wait id. A final record expires with its run.
-- Returns {'ok', lease ms} or {'missing', ''} (no such task of this user)
-- or {'stale', why}: the task's state, 'token' or 'expired'.
local f = redis.call('HMGET', KEYS[1], 'user', 'state', 'token', 'lease_until', 'lease_ms')
if not f[1] or f[1] ~= ARGV[1] then return {'missing', ''} end
if f[2] ~= 'claimed' then return {'stale', f[2]} end
if f[3] ~= ARGV[2] then return {'stale', 'token'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function final(state)
  redis.call('HSET', KEYS[1], 'state', state)
  redis.call('HDEL', KEYS[1], 'token')
  redis.call('PUBLISH', ARGV[10], ARGV[11])
end
if now >= tonumber(f[4]) then
  final('expired')
  return {'stale', 'expired'}
end
if ARGV[3] == 'completed' then
  redis.call('HSET', KEYS[1], 'output', ARGV[4])
  final('completed')
elseif ARGV[3] == 'failed' then
  redis.call('HSET', KEYS[1], 'error', ARGV[4], 'retryable', ARGV[5])
  final('failed')
else
  redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(f[5]))
  if ARGV[6] == '1' or ARGV[8] == '1' then
    if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'progress', ARGV[7]) end
    if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'message', ARGV[9]) end
    redis.call('HINCRBY', KEYS[1], 'progress_n', 1)
    redis.call('PUBLISH', ARGV[10], ARGV[11])
  end
end
return {'ok', f[5]}
