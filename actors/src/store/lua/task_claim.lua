-- Claims up to ARGV[1] tasks from the user's queues, in the order given:
-- each gets a fresh token and a lease. Tasks of runs that ended meanwhile
-- are cancelled and tasks past their deadline timed out on the way.
-- KEYS: the user's queues.
-- ARGV: 1 max, 2 wait key prefix, 3 run key prefix, 4 worker id,
--       5 seconds a final record is kept, 6 settled channel, 7 user,
--       8.. one token per task that may be claimed.
-- Returns a flat list, 8 per task: id, token, run id, node id, attempt,
-- queue, input, lease ms. Each claim is announced on the settled channel
-- (the run actor then watches the lease).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[1])
local out = {}
local n = 0
for q = 1, #KEYS do
  while n < max do
    local p = redis.call('ZPOPMIN', KEYS[q])
    if #p == 0 then break end
    local id = p[1]
    local key = ARGV[2] .. id
    local f = redis.call('HMGET', key, 'state', 'run_id', 'node_id', 'attempt', 'queue',
      'input', 'lease_ms', 'deadline_ms', 'user')
    if f[1] == 'queued' and f[9] == ARGV[7] then
      local st = redis.call('HGET', ARGV[3] .. f[2], 'status')
      local deadline = tonumber(f[8]) or 0
      if not st or st == 'completed' or st == 'failed' or st == 'cancelled' then
        redis.call('HSET', key, 'state', 'cancelled')
        redis.call('EXPIRE', key, ARGV[5])
      elseif deadline > 0 and now >= deadline then
        redis.call('HSET', key, 'state', 'timed_out')
        redis.call('EXPIRE', key, ARGV[5])
        redis.call('PUBLISH', ARGV[6], id)
      else
        n = n + 1
        local token = ARGV[7 + n]
        redis.call('HSET', key, 'state', 'claimed', 'token', token, 'worker_id', ARGV[4],
          'claimed_ms', now, 'lease_until', now + tonumber(f[7]))
        redis.call('PUBLISH', ARGV[6], id)
        for _, v in ipairs({id, token, f[2], f[3], f[4], f[5], f[6], f[7]}) do
          table.insert(out, v)
        end
      end
    end
  end
end
return out
