-- Redis's clock and the extent of a user's history (see store/history.rs).
-- KEYS: 1 history stream.
-- Returns {now_ms, last_generated_id, first_entry_id, trimmed}: ids are ''
-- when there is no stream / no entry; trimmed is 1 when entries were ever
-- removed from the stream (by count or age).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then return {now, '', '', 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local m = {}
for i = 1, #info, 2 do m[info[i]] = info[i + 1] end
local first = ''
if m['first-entry'] then first = m['first-entry'][1] end
local trimmed = 0
if tonumber(m['entries-added']) > tonumber(m['length']) then trimmed = 1 end
return {now, m['last-generated-id'], first, trimmed}
