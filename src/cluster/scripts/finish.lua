-- Records rows whose final record is durable in a node's log, counts each row once, and
-- acknowledges the chunks all of whose rows are final.
--
-- KEYS[1] the rows stream, KEYS[2] the results stream, KEYS[3] the node's counts hash, KEYS[4]
-- the done bitmap (bit LINE set once row LINE is final anywhere), KEYS[5] the node's name
-- lease. ARGV[1] the consumer group, ARGV[2] the node, ARGV[3] the node's lease token, ARGV[4]
-- S segments, ARGV[5] C counts, then S pairs of a byte offset into the bitmap and the bytes to
-- set there (the rows' bits, most significant first, as Redis numbers a bitmap's bits), then C
-- pairs of a counts field and its value with these rows counted, then the rows' results text,
-- then the ids (first lines) of the chunks to acknowledge.
--
-- All or nothing: if any of the rows is final already (another node took its chunk over and
-- finished it too), nothing changes and the script returns those rows' lines; the node leaves
-- them out and calls again, so the counts hold one final state per row. Else every row's bit
-- is set, the node's counts (per status `s:STATUS`, per domain `d:DOMAIN:STATUS`) take their
-- new values in one HSET, the text goes to the results stream as one entry (`node`, and
-- `records`: "LINE STATUS DOMAIN" lines), the chunks are acknowledged, and the script returns
-- an empty list.
--
-- The node sends whole values, not increments, since only it writes its hash: it reads the
-- hash again whenever it reconnects (so a call whose reply was lost leaves no error behind),
-- and the call is refused (NODETAKEN) unless the caller holds the node's name lease, so a
-- process that lost its name while cut off cannot write values it no longer knows. That is one
-- HSET a call where an HINCRBY per field was ~100 on a list of 100 domains, a fifth of Redis's
-- CPU per row. And the bitmap is read and written a byte range at a time, not a bit per row:
-- with a BITFIELD SET per row the call cost Redis ~1.5 us a row, on the core that also runs
-- the sink.
if redis.call('GET', KEYS[5]) ~= ARGV[3] then
  return redis.error_reply('NODETAKEN the node name ' .. ARGV[2] .. ' is held by another process')
end
local s, c = tonumber(ARGV[4]), tonumber(ARGV[5])
local counts_at = 5 + 2 * s
local text_at = counts_at + 2 * c + 1
local band, bor, rshift = bit.band, bit.bor, bit.rshift
local byte, char = string.byte, string.char

local olds = {}
local already = {}
for i = 1, s do
  local at, mask = tonumber(ARGV[4 + 2 * i]), ARGV[5 + 2 * i]
  local old = redis.call('GETRANGE', KEYS[4], at, at + #mask - 1)
  olds[i] = old
  for j = 1, #old do
    local both = band(byte(old, j), byte(mask, j))
    if both ~= 0 then
      for b = 0, 7 do
        if band(both, rshift(128, b)) ~= 0 then
          already[#already + 1] = (at + j - 1) * 8 + b
        end
      end
    end
  end
end
if #already > 0 then
  return already
end

for i = 1, s do
  local at, mask, old = tonumber(ARGV[4 + 2 * i]), ARGV[5 + 2 * i], olds[i]
  local new = mask
  if #old > 0 then
    local bytes = {}
    for j = 1, #old do
      bytes[j] = char(bor(byte(old, j), byte(mask, j)))
    end
    new = table.concat(bytes) .. string.sub(mask, #old + 1)
  end
  redis.call('SETRANGE', KEYS[4], at, new)
end
if s > 0 then
  if c > 0 then
    redis.call('HSET', KEYS[3], unpack(ARGV, counts_at + 1, counts_at + 2 * c))
  end
  redis.call('XADD', KEYS[2], '*', 'node', ARGV[2], 'records', ARGV[text_at])
end
if #ARGV > text_at then
  local ids = {}
  for i = text_at + 1, #ARGV do
    ids[#ids + 1] = '0-' .. ARGV[i]
  end
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return already
