-- Queues a child run once (see store/runs.rs enqueue_child): a parent that
-- resumes and starts the same child again finds it and queues nothing.
-- KEYS: 1 run hash, 2 user's runs index, 3 request stream.
-- ARGV: 1 run id, 2 created ms, 3.. field/value pairs of the run hash.
-- Returns 1 when queued now, 0 when the run existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'run_id', ARGV[1])
return 1
