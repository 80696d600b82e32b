-- Deletes the leases (KEYS) held by runner ARGV[1].
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 1
