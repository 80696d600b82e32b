-- Extends the leases (KEYS) held by this process (ARGV[1], instance#nonce)
-- to ARGV[2] ms.
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
end
return 1
