-- Deletes a lease (a node's name) if the caller still holds it: a node that lost its name to
-- another process while cut off must not free the other's.
--
-- KEYS[1] the lease. ARGV[1] the holder's token.
-- Returns nothing.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
