-- Records rows whose final record is durable in a node's log, counts each row once, and
-- acknowledges the chunks all of whose rows are final.
--
-- KEYS[1] the rows stream, KEYS[2] the results stream, KEYS[3] the counts hash, KEYS[4] the
-- done bitmap (bit LINE set once row LINE is final anywhere).
-- ARGV[1] the consumer group, ARGV[2] the node, ARGV[3] N rows, ARGV[4] K kinds, ARGV[5] C
-- counts, then N lines, then N kind numbers (1..K), then K pairs of status (delivered,
-- bounced, ...) and the recipient's domain (may be empty), then C pairs of a counts field and
-- how many rows it gains if every row is counted, then those rows' results text, then the ids
-- (first lines) of the chunks to acknowledge.
--
-- A row is counted only if this call set its bit: a row two nodes both finished (one took its
-- chunk over from the other) is counted for the first, so the counts hold one final state per
-- row. Counts are kept per status (`s:STATUS`), per domain (`d:DOMAIN:STATUS`) and per node
-- (`n:NODE:STATUS`); the rows counted go to the results stream as one entry per call (`node`,
-- and `records`: "LINE STATUS DOMAIN" lines). When every row's bit was new (the usual case) the
-- node's own sums and text are used as they are; else the rows counted are summed here.
-- Returns how many rows were counted.
local n, k, c = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lines, kinds, pairs_at = 5, 5 + n, 5 + 2 * n
local counts_at = pairs_at + 2 * k
local text_at = counts_at + 2 * c + 1
local counted = 0
if n > 0 then
  local ops = {}
  for i = 1, n do
    ops[#ops + 1] = 'SET'
    ops[#ops + 1] = 'u1'
    ops[#ops + 1] = ARGV[lines + i]
    ops[#ops + 1] = '1'
  end
  local was = redis.call('BITFIELD', KEYS[4], unpack(ops))
  for i = 1, n do
    if was[i] == 0 then
      counted = counted + 1
    end
  end
  if counted == n then
    for j = counts_at + 1, counts_at + 2 * c, 2 do
      redis.call('HINCRBY', KEYS[3], ARGV[j], ARGV[j + 1])
    end
    redis.call('XADD', KEYS[2], '*', 'node', ARGV[2], 'records', ARGV[text_at])
  elseif counted > 0 then
    local counts = {}
    local records = {}
    local function add(key)
      counts[key] = (counts[key] or 0) + 1
    end
    for i = 1, n do
      if was[i] == 0 then
        local kind = tonumber(ARGV[kinds + i])
        local status, domain = ARGV[pairs_at + 2 * kind - 1], ARGV[pairs_at + 2 * kind]
        add('s:' .. status)
        add('n:' .. ARGV[2] .. ':' .. status)
        if domain ~= '' then
          add('d:' .. domain .. ':' .. status)
        end
        records[#records + 1] = ARGV[lines + i] .. ' ' .. status .. ' ' .. domain
      end
    end
    for key, m in pairs(counts) do
      redis.call('HINCRBY', KEYS[3], key, m)
    end
    redis.call('XADD', KEYS[2], '*', 'node', ARGV[2], 'records', table.concat(records, '\n'))
  end
end
if #ARGV > text_at then
  local ids = {}
  for i = text_at + 1, #ARGV do
    ids[#ids + 1] = '0-' .. ARGV[i]
  end
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return counted
