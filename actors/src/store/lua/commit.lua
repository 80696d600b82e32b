-- Applies one commit of a run atomically (see store/commit.rs).
-- KEYS: 1 run hash, 2 run events, 3 history, 4 user results, 5 active set,
--       6 request stream, 7 owner lease, 8 user's active runs.
-- ARGV: 1 channel, 2 commit JSON, 3 history max length, 4 result key prefix,
--       5 consumer group.
-- Returns {code, published}: code is 'applied', 'duplicate',
-- 'status_mismatch', 'not_owner', 'ended' or 'behind'.
local c = cjson.decode(ARGV[2])
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
if (st == 'completed' or st == 'failed' or st == 'cancelled') and c.seq ~= cur then
  ack()
  return {'ended', 0}
end
if c.seq == cur or (c.retry and c.seq < cur) then
  ack()
  return {'duplicate', 0}
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
redis.call('HSET', KEYS[1], 'seq', c.seq)
local r = c.results
for i = 1, #r, 2 do
  redis.call('SET', ARGV[4] .. r[i], r[i + 1])
  redis.call('SADD', KEYS[4], r[i])
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
