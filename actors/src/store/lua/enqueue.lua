-- Accepts a run if its user is within their quotas, atomically (see
-- store/runs.rs `enqueue`): a refused run writes nothing, and every API
-- instance sharing this Redis enforces the same limits.
-- KEYS: 1 run hash, 2 user's runs index, 3 request stream, 4 user's active
--       runs, 5 user's rate bucket, 6 user's ended runs, 7 user's readable
--       results.
-- ARGV: 1 max active runs, 2 runs per second, 3 burst, 4 run id,
--       5 index member (creation time and run id), 6 request field for the
--       run id, 7.. the run hash's field/value pairs.
-- Returns {code, retry_after_s}: code is 'accepted', 'quota_exceeded' or
-- 'rate_limited'.
local max_active = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local run_id = ARGV[4]

if redis.call('SCARD', KEYS[4]) >= max_active then
  -- A slot frees when one of the user's runs ends; ask again in a second.
  return {'quota_exceeded', 1}
end

-- Token bucket on Redis's clock (one clock for every API instance): `burst`
-- tokens when full, refilled at `rate` per second. An absent bucket is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[5], 'tokens', 'ms')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000)
end
if tokens < 1 then
  return {'rate_limited', math.max(1, math.ceil((1 - tokens) / rate))}
end
redis.call('HSET', KEYS[5], 'tokens', tostring(tokens - 1), 'ms', now)
-- Once full again the bucket is the same as no bucket: let it expire.
redis.call('PEXPIRE', KEYS[5], math.ceil(burst * 1000 / rate) + 1000)

local h = {}
for i = 7, #ARGV do h[#h + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(h))
redis.call('ZADD', KEYS[2], 0, ARGV[5])
-- The user holds a live run again: their keys lose the expiry the end of
-- their last run gave them.
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[6])
redis.call('PERSIST', KEYS[7])
redis.call('XADD', KEYS[3], '*', ARGV[6], run_id)
redis.call('SADD', KEYS[4], run_id)
return {'accepted', 0}
