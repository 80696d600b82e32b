-- Brings a wait record up to date and reports it to its run actor: a
-- buffered signal completes a signal wait, a passed deadline times a wait
-- out, a lapsed lease expires a claimed task. Each of these moves the record
-- to a final state once; a final record is reported as it is, every time.
-- KEYS: 1 wait record, 2 the user's task queue (tasks; else the record),
--       3 the run's signals (signal waits; else the record).
-- ARGV: 1 wait id. A final record expires with its run.
-- Returns {state, next check in ms (-1: none), output, error, retryable,
--          progress_n, progress, message, deadline_ms, worker_id, lease_ms}.
local f = redis.call('HMGET', KEYS[1], 'state', 'kind', 'deadline_ms', 'lease_until',
  'signal', 'output', 'error', 'retryable', 'progress_n', 'progress', 'message',
  'worker_id', 'lease_ms')
local state = f[1]
if not state then return {'missing'} end
local next_in = -1
if state == 'queued' or state == 'claimed' or state == 'waiting' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local deadline = tonumber(f[3]) or 0
  local lease_until = tonumber(f[4]) or 0
  local final = nil
  if f[2] == 'signal' and redis.call('HEXISTS', KEYS[3], f[5]) == 1 then
    f[6] = redis.call('HGET', KEYS[3], f[5])
    redis.call('HSET', KEYS[1], 'output', f[6])
    final = 'completed'
  elseif deadline > 0 and now >= deadline then
    final = 'timed_out'
    if state == 'queued' then redis.call('ZREM', KEYS[2], ARGV[1]) end
  elseif state == 'claimed' and now >= lease_until then
    final = 'expired'
  end
  if final then
    redis.call('HSET', KEYS[1], 'state', final)
    redis.call('HDEL', KEYS[1], 'token')
    state = final
  else
    if deadline > 0 then next_in = deadline - now end
    if state == 'claimed' and (next_in < 0 or lease_until - now < next_in) then
      next_in = lease_until - now
    end
    state = 'waiting'
  end
end
return {state, tostring(next_in), f[6] or '', f[7] or '', f[8] or '0', f[9] or '0',
  f[10] or '', f[11] or '', f[3] or '0', f[12] or '', f[13] or '0'}
