-- Keeps the rows a node holds (waiting for a retry, or being sent) its own: resets their idle
-- time, so that other nodes' XAUTOCLAIM, which takes rows idle for --claim-idle, leaves them.
--
-- KEYS[1] the rows stream. ARGV[1] the consumer group, ARGV[2] the node, then the rows' lines.
--
-- Only a row still pending under this node is touched: one another node took over (this node
-- was cut off from Redis longer than --claim-idle) or already finished is returned instead,
-- and the node drops it. Returns the lines of the rows no longer this node's.
local lost = {}
for i = 3, #ARGV do
  local id = '0-' .. ARGV[i]
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #mine == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
