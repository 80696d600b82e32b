-- Deletes the leases held by this process and clears the crash-loop count
-- of their runs: a drain letting go of a run is no crash.
-- KEYS: pairs of (owner lease, run hash). ARGV: 1 holder (instance#nonce).
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    redis.call('HDEL', KEYS[i + 1], 'resumed_at_seq', 'resumes')
  end
end
return 1
