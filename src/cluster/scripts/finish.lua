-- Acknowledges rows whose final record is durable in a node's log, and counts each row once.
--
-- KEYS[1] the rows stream, KEYS[2] the results stream, KEYS[3] the counts hash.
-- ARGV[1] the consumer group, ARGV[2] the node, then three arguments per row: line, status
-- (delivered, bounced, ...), the recipient's domain (may be empty).
--
-- A row is counted only if this XACK took it out of the group's pending entries: a row two
-- nodes both finished (one took it over from the other) is counted for the first, so the
-- counts hold one final state per row. Counts are kept per status (`s:STATUS`), per domain
-- (`d:DOMAIN:STATUS`) and per node (`n:NODE:STATUS`); the rows counted go to the results
-- stream as one entry per batch (`node`, and `records`: "LINE STATUS DOMAIN" lines).
-- Returns how many rows were counted.
local counts = {}
local records = {}
local function count(key)
  counts[key] = (counts[key] or 0) + 1
end
for i = 3, #ARGV, 3 do
  local line, status, domain = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('XACK', KEYS[1], ARGV[1], '0-' .. line) == 1 then
    count('s:' .. status)
    count('n:' .. ARGV[2] .. ':' .. status)
    if domain ~= '' then
      count('d:' .. domain .. ':' .. status)
    end
    records[#records + 1] = line .. ' ' .. status .. ' ' .. domain
  end
end
for key, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], key, n)
end
if #records > 0 then
  redis.call('XADD', KEYS[2], '*', 'node', ARGV[2], 'records', table.concat(records, '\n'))
end
return #records
