-- A node's connection leases to one destination, out of the fleet's limit, shared fairly
-- among the nodes that want them.
--
-- KEYS[1] the destination's leases: a hash, node -> "HELD EXPIRY_MS WANT" (Redis's clock).
-- ARGV[1] the node, ARGV[2] the connections it wants, ARGV[3] the fleet's limit, ARGV[4] the
-- lease's time to live (ms), ARGV[5] the connections the node has open now.
--
-- Leases of other nodes past their expiry (a node that died) are dropped. A node is granted
-- what it wants up to what the others hold less than the limit; and while another node waits
-- with less than a fair share (the limit split evenly among the nodes that want some, at
-- least one), no more than that share. A node granted fewer than it has open sheds the rest
-- (its sessions end after what they have in flight); until then it holds what is open: HELD
-- is the larger of the grant and the open connections, and only HELD counts against the limit,
-- so the connections of the fleet never pass it. Returns the connections granted (0 drops the
-- node's lease once nothing is open).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, want, limit, ttl, open =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local others, wanting = 0, 0
local live = {}
local leases = redis.call('HGETALL', KEYS[1])
for i = 1, #leases, 2 do
  if leases[i] ~= node then
    local held, expiry, wants = string.match(leases[i + 1], '(%d+) (%d+) (%d+)')
    held, expiry, wants = tonumber(held), tonumber(expiry), tonumber(wants)
    if expiry <= now then
      redis.call('HDEL', KEYS[1], leases[i])
    else
      others = others + held
      if wants > 0 then
        wanting = wanting + 1
      end
      live[#live + 1] = { held, wants }
    end
  end
end
local grant = math.min(want, math.max(0, limit - others))
if want > 0 then
  -- Another node waiting with less than its share: no more than a share here either.
  local fair = math.max(1, math.floor(limit / (wanting + 1)))
  for _, other in ipairs(live) do
    if other[2] > other[1] and other[1] < fair then
      grant = math.min(grant, fair)
      break
    end
  end
end
local held = math.max(grant, open)
if held > 0 or want > 0 then
  redis.call('HSET', KEYS[1], node, held .. ' ' .. (now + ttl) .. ' ' .. want)
  -- The hash outlives every lease in it (each ends at most its own ttl after its renewal).
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
else
  redis.call('HDEL', KEYS[1], node)
end
return grant
