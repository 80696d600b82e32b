-- Claims up to ARGV[1] tasks from the user's queues, in the order given:
-- each gets a fresh token and a lease. Tasks past their deadline are timed
-- out on the way. A task of a run that ended is not on a queue (the commit
-- that ends a run takes its tasks off); should one be found, it is
-- cancelled and kept only as long as its run.
-- KEYS: the user's queues.
-- ARGV: 1 max, 2 wait key prefix, 3 run key prefix, 4 worker id,
--       5 settled channel, 6 user, 7.. one token per task that may be claimed.
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
    if f[1] == 'queued' and f[9] == ARGV[6] then
      local run = ARGV[3] .. f[2]
      local st = redis.call('HGET', run, 'status')
      local deadline = tonumber(f[8]) or 0
      if not st or st == 'completed' or st == 'failed' or st == 'cancelled' then
        redis.call('HSET', key, 'state', 'cancelled')
        local ttl = redis.call('PTTL', run)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('DEL', key) end
      elseif deadline > 0 and now >= deadline then
        redis.call('HSET', key, 'state', 'timed_out')
        redis.call('PUBLISH', ARGV[5], id)
      else
        n = n + 1
        local token = ARGV[6 + n]
        redis.call('HSET', key, 'state', 'claimed', 'token', token, 'worker_id', ARGV[4],
          'claimed_ms', now, 'lease_until', now + tonumber(f[7]))
        redis.call('PUBLISH', ARGV[5], id)
        for _, v in ipairs({id, token, f[2], f[3], f[4], f[5], f[6], f[7]}) do
          table.insert(out, v)
        end
      end
    end
  end
end
return out
