-- Records a signal posted to a running run, once per name, and wakes the
-- run's actor; its signal nodes complete with the payload when they wait.
-- KEYS: 1 the run's signals, 2 run hash.
-- ARGV: 1 name, 2 payload JSON, 3 settled channel, 4 run id.
-- Returns 'ok', 'missing', 'ended' (the run has finished) or 'duplicate'.
local st = redis.call('HGET', KEYS[2], 'status')
if not st then return 'missing' end
if st == 'completed' or st == 'failed' or st == 'cancelled' then return 'ended' end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 'duplicate' end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 'ok'
