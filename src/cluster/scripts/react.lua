-- Records a reaction one node's engine applied to a destination, for every node to apply.
--
-- KEYS[1] the campaign's reactions: a hash, destination key -> "UNTIL_MS RULE ACTION".
-- ARGV[1] the destination's key, ARGV[2] until when (Unix ms), ARGV[3] the whole value.
--
-- The later of two reactions to one destination stands (a match while one holds extends it,
-- as on one node). Returns 1 if recorded.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local expires = tonumber(string.match(current, '^(%d+)'))
  if expires and expires >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
