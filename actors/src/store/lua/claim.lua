-- Takes a run's lease for this process when it is free, already ours, or
-- held by a process known to be gone; never on a run that has ended.
-- Taking it over is a resumption: resumptions in a row that find the run's
-- seq unchanged (no progress) are counted, and past the limit the claim
-- says so, so that the caller fails the run instead of resuming it again.
-- KEYS: 1 owner lease, 2 run hash.
-- ARGV: 1 holder (instance#nonce), 2 lease ms, 3 a holder known to be gone
--       ('' for none), 4 most resumptions without progress.
-- Returns 0: not ours; 1: ours, resume it; 2: ours, but fail it (crash loop).
local st = redis.call('HGET', KEYS[2], 'status')
if not st or st == 'completed' or st == 'failed' or st == 'cancelled' then return 0 end
local o = redis.call('GET', KEYS[1])
if o == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if o and o ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local seq = redis.call('HGET', KEYS[2], 'seq') or '0'
local n = 1
if redis.call('HGET', KEYS[2], 'resumed_at_seq') == seq then
  n = tonumber(redis.call('HGET', KEYS[2], 'resumes') or '0') + 1
end
redis.call('HSET', KEYS[2], 'resumed_at_seq', seq, 'resumes', n)
if n > tonumber(ARGV[4]) then return 2 end
return 1
