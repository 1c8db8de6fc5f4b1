-- A node's connection leases to one destination, out of the fleet's limit.
--
-- KEYS[1] the destination's leases: a hash, node -> "COUNT EXPIRY_MS" (Redis's clock).
-- ARGV[1] the node, ARGV[2] the connections it wants, ARGV[3] the fleet's limit, ARGV[4] the
-- lease's time to live (ms).
--
-- Leases of other nodes past their expiry (a node that died) are dropped; the node gets what
-- it wants up to what the others leave of the limit. A live node keeps what it holds as long as
-- it asks for it (the others were granted only what it left), so the sum never passes the
-- limit. Returns the connections granted (0 drops the node's lease).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local others = 0
local leases = redis.call('HGETALL', KEYS[1])
for i = 1, #leases, 2 do
  if leases[i] ~= ARGV[1] then
    local count, expiry = string.match(leases[i + 1], '(%d+) (%d+)')
    if tonumber(expiry) <= now then
      redis.call('HDEL', KEYS[1], leases[i])
    else
      others = others + tonumber(count)
    end
  end
end
local grant = math.min(tonumber(ARGV[2]), math.max(0, tonumber(ARGV[3]) - others))
if grant > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], grant .. ' ' .. (now + ttl))
  -- The hash outlives every lease in it (each ends at most its own ttl after its renewal).
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return grant
