-- A resumed run whose every active node now only waits (a task, an
-- approval, a signal with its wait established, or a child run found
-- running) has done all the work a resumption does in the daemon: for the
-- crash-loop count, that is progress. Clears the count, if this process
-- holds the run.
-- KEYS: 1 owner lease, 2 run hash. ARGV: 1 holder (instance#nonce).
-- Returns 1 if cleared, 0 if the lease is not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], 'resumed_at_seq', 'resumes')
  return 1
end
return 0
