-- Applies one commit of a run atomically (see store/commit.rs).
-- KEYS: 1 run hash, 2 run events, 3 history, 4 user's readable results,
--       5 active set, 6 request stream, 7 owner lease, 8 run's result refs,
--       9 user's runs index, 10 user's ended runs, 11 user's active runs,
--       12 run's waits, 13 run's signals.
-- ARGV: 1 channel, 2 commit JSON, 3 history max length, 4 result key prefix,
--       5 consumer group, 6 retention ms, 7 result holders suffix, 8 user,
--       9 history event field, 10 '1' when sent again after a failed write,
--       11 wait key prefix, 12 the user's task queue key prefix,
--       13.. result ref / canonical JSON pairs (outside the JSON, so that a
--       large output is never decoded here).
-- Returns {code, published}: code is 'applied', 'duplicate',
-- 'status_mismatch', 'not_owner', 'ended' or 'behind'.
local c = cjson.decode(ARGV[2])
local keep = tonumber(ARGV[6])
local retry = ARGV[10] == '1'
-- An acknowledged request is deleted too: the stream holds only what is
-- still to be done.
local function ack()
  if c.ack then
    redis.call('XACK', KEYS[6], ARGV[5], c.ack)
    redis.call('XDEL', KEYS[6], c.ack)
  end
end
local now_ms
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
if c.owner then
  local o = redis.call('GET', KEYS[7])
  if o and o ~= c.owner then return {'not_owner', 0} end
end
if c.expect_status then
  if redis.call('HGET', KEYS[1], 'status') ~= c.expect_status then
    ack()
    return {'status_mismatch', 0}
  end
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local st = redis.call('HGET', KEYS[1], 'status')
-- A duplicate is this very commit, applied before: its writer made the
-- run's latest streak of commits and its seq lies within that streak (an
-- earlier one only when the Publisher sends it again). Another process's
-- commit with the same seq is not a duplicate: it is behind.
local writer = redis.call('HGET', KEYS[1], 'writer')
local me = c.owner or ''
if c.seq <= cur and (c.seq == cur or retry) and writer == me
    and c.seq > tonumber(redis.call('HGET', KEYS[1], 'writer_from') or '0') then
  ack()
  return {'duplicate', 0}
end
if st == 'completed' or st == 'failed' or st == 'cancelled' then
  ack()
  return {'ended', 0}
end
if c.seq - #c.events ~= cur then
  return {'behind', 0}
end
if c.owner and c.lease_ms then
  redis.call('SET', KEYS[7], c.owner, 'PX', c.lease_ms)
end
local h = c.hset
for i = 1, #h, 512 do
  redis.call('HSET', KEYS[1], unpack(h, i, math.min(i + 511, #h)))
end
if writer ~= me then
  redis.call('HSET', KEYS[1], 'writer', me, 'writer_from', cur)
end
redis.call('HSET', KEYS[1], 'seq', c.seq)
-- Outputs are shared by content address. Each live run holding one counts
-- once in its holders hash (per user); SET makes it persistent again.
for i = 13, #ARGV, 2 do
  local ref = ARGV[i]
  redis.call('SET', ARGV[4] .. ref, ARGV[i + 1])
  if redis.call('SADD', KEYS[8], ref) == 1 then
    redis.call('HINCRBY', ARGV[4] .. ref .. ARGV[7], ARGV[8], 1)
    redis.call('ZADD', KEYS[4], '+inf', ref)
  end
end
if c.active == 1 then redis.call('SADD', KEYS[5], c.run_id) end
ack()
for _, p in ipairs(c.events) do
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*', ARGV[9], p)
  local full = string.sub(p, 1, -2) .. ',"event_id":"' .. id .. '"}'
  redis.call('RPUSH', KEYS[2], full)
  redis.call('PUBLISH', ARGV[1], full)
end
if #c.events > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d-0', math.max(0, now() - keep)))
  redis.call('PEXPIRE', KEYS[3], keep)
end
if c.active == -1 then
  -- The run ended: it is kept for the retention, then it is gone.
  local exp = string.format('%d', now() + keep)
  redis.call('SREM', KEYS[5], c.run_id)
  redis.call('SREM', KEYS[11], c.run_id)
  redis.call('DEL', KEYS[7])
  for _, ref in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    local holders = ARGV[4] .. ref .. ARGV[7]
    if redis.call('HINCRBY', holders, ARGV[8], -1) <= 0 then
      -- No live run of this user holds it: readable until now + retention.
      redis.call('HDEL', holders, ARGV[8])
      redis.call('ZADD', KEYS[4], exp, ref)
    end
    if redis.call('EXISTS', holders) == 0 then
      -- No live run at all: this is the latest end among its holders, so
      -- now + retention outlasts every grant of it.
      redis.call('PEXPIRE', ARGV[4] .. ref, keep)
    end
  end
  redis.call('DEL', KEYS[8])
  -- Its waits end with it: an open one is cancelled (a queued task leaves
  -- its queue; a worker's next report is refused), and every record is
  -- kept as long as the run.
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[12])) do
    local w = ARGV[11] .. id
    local f = redis.call('HMGET', w, 'state', 'queue')
    if f[1] == 'queued' or f[1] == 'claimed' or f[1] == 'waiting' then
      redis.call('HSET', w, 'state', 'cancelled')
      redis.call('HDEL', w, 'token')
      if f[1] == 'queued' then redis.call('ZREM', ARGV[12] .. f[2], id) end
    end
    redis.call('PEXPIRE', w, keep)
  end
  redis.call('DEL', KEYS[12])
  redis.call('PEXPIRE', KEYS[13], keep)
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_ms') or '0') or 0
  redis.call('ZADD', KEYS[10], exp, string.format('%016d:%s', created, c.run_id))
  -- Prune what expired from the user's index and grants.
  local due = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', string.format('%d', now()), 'LIMIT', 0, 64)
  if #due > 0 then
    redis.call('ZREM', KEYS[9], unpack(due))
    redis.call('ZREM', KEYS[10], unpack(due))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', now()))
  if redis.call('ZCARD', KEYS[9]) <= redis.call('ZCARD', KEYS[10]) then
    -- None of the user's runs is live: everything in these keys ends by now + retention.
    redis.call('PEXPIRE', KEYS[9], keep)
    redis.call('PEXPIRE', KEYS[10], keep)
    redis.call('PEXPIRE', KEYS[4], keep)
  end
end
return {'applied', #c.events}
