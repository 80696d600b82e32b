-- Takes a run's lease when it is free or already held by this runner,
-- unless the run has ended meanwhile: a lease is never left on a finished run.
-- KEYS: 1 owner lease, 2 run hash. ARGV: 1 runner, 2 lease ms.
-- Returns 1 when the lease is ours, 0 otherwise.
local st = redis.call('HGET', KEYS[2], 'status')
if not st or st == 'completed' or st == 'failed' or st == 'cancelled' then return 0 end
local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
