-- Applies one commit of a run atomically (see store/commit.rs).
-- KEYS: 1 run hash, 2 run events, 3 history, 4 user results, 5 active set,
--       6 request stream, 7 owner lease, 8 user's active runs.
-- ARGV: 1 channel, 2 commit JSON, 3 history max length, 4 result key prefix,
--       5 consumer group, 6 '1' when sent again after a failed write,
--       7.. result ref / canonical JSON pairs (outside the JSON, so that a
--       large output is never decoded here).
-- Returns {code, published}: code is 'applied', 'duplicate',
-- 'status_mismatch', 'not_owner', 'ended' or 'behind'.
local c = cjson.decode(ARGV[2])
local retry = ARGV[6] == '1'
local function ack()
  if c.ack then redis.call('XACK', KEYS[6], ARGV[5], c.ack) end
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
for i = 7, #ARGV, 2 do
  redis.call('SET', ARGV[4] .. ARGV[i], ARGV[i + 1])
  redis.call('SADD', KEYS[4], ARGV[i])
end
if c.active == 1 then redis.call('SADD', KEYS[5], c.run_id) end
if c.active == -1 then
  redis.call('SREM', KEYS[5], c.run_id)
  redis.call('SREM', KEYS[8], c.run_id)
  redis.call('DEL', KEYS[7])
end
ack()
for _, p in ipairs(c.events) do
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*', 'e', p)
  local full = string.sub(p, 1, -2) .. ',"event_id":"' .. id .. '"}'
  redis.call('RPUSH', KEYS[2], full)
  redis.call('PUBLISH', ARGV[1], full)
end
return {'applied', #c.events}
