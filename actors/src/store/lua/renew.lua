-- Extends the leases (KEYS) held by runner ARGV[1] to ARGV[2] ms.
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
end
return 1
