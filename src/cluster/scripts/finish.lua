-- Records rows whose final record is durable in a node's log, counts each row once, and
-- acknowledges the chunks all of whose rows are final.
--
-- KEYS[1] the rows stream, KEYS[2] the results stream, KEYS[3] the counts hash, KEYS[4] the
-- done bitmap (bit LINE set once row LINE is final anywhere).
-- ARGV[1] the consumer group, ARGV[2] the node, ARGV[3] N rows, ARGV[4] K kinds, then N lines,
-- then N kind numbers (1..K), then K pairs of status (delivered, bounced, ...) and the
-- recipient's domain (may be empty), then the ids of the chunks to acknowledge.
--
-- A row is counted only if this call set its bit: a row two nodes both finished (one took its
-- chunk over from the other) is counted for the first, so the counts hold one final state per
-- row. Counts are kept per status (`s:STATUS`), per domain (`d:DOMAIN:STATUS`) and per node
-- (`n:NODE:STATUS`); the rows counted go to the results stream as one entry per call (`node`,
-- and `records`: "LINE STATUS DOMAIN" lines). Returns how many rows were counted.
local n, k = tonumber(ARGV[3]), tonumber(ARGV[4])
local lines, kinds, pairs_at, acks_at = 4, 4 + n, 4 + 2 * n, 4 + 2 * n + 2 * k
local counted = 0
if n > 0 then
  local ops = {}
  for i = 1, n do
    ops[#ops + 1] = 'SET'
    ops[#ops + 1] = 'u1'
    ops[#ops + 1] = ARGV[lines + i]
    ops[#ops + 1] = 1
  end
  local was = redis.call('BITFIELD', KEYS[4], unpack(ops))
  local per_kind = {}
  local records = {}
  for i = 1, n do
    if was[i] == 0 then
      local kind = tonumber(ARGV[kinds + i])
      per_kind[kind] = (per_kind[kind] or 0) + 1
      records[#records + 1] = ARGV[lines + i] .. ' ' .. ARGV[pairs_at + 2 * kind - 1] .. ' ' .. ARGV[pairs_at + 2 * kind]
      counted = counted + 1
    end
  end
  local counts = {}
  local function add(key, c)
    counts[key] = (counts[key] or 0) + c
  end
  for kind, c in pairs(per_kind) do
    local status, domain = ARGV[pairs_at + 2 * kind - 1], ARGV[pairs_at + 2 * kind]
    add('s:' .. status, c)
    add('n:' .. ARGV[2] .. ':' .. status, c)
    if domain ~= '' then
      add('d:' .. domain .. ':' .. status, c)
    end
  end
  for key, c in pairs(counts) do
    redis.call('HINCRBY', KEYS[3], key, c)
  end
  if #records > 0 then
    redis.call('XADD', KEYS[2], '*', 'node', ARGV[2], 'records', table.concat(records, '\n'))
  end
end
if #ARGV > acks_at then
  local ids = {}
  for i = acks_at + 1, #ARGV do
    ids[#ids + 1] = '0-' .. ARGV[i]
  end
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return counted
