-- Adds a batch of a campaign's rows to its stream, for the node holding the loader's lock.
--
-- KEYS[1] the rows stream, KEYS[2] the campaign's meta hash, KEYS[3] the loader's lock.
-- ARGV[1] the loader's token, ARGV[2] the lock's time to live (ms), ARGV[3] "1" if this is the
-- last batch (the input ends with it), then four arguments per chunk of consecutive rows: its
-- first line, its last line, how many rows it holds, and the rows (see entry.rs).
--
-- A chunk's entry id is 0-FIRST: a chunk starting at or below the meta's `loaded_to` is
-- already in (a loader that took over from a dead one re-reads the file from the start, and
-- cuts its chunks after `loaded_to`) and is skipped, so no row is added twice. Each entry
-- also says `upto`, the rows in the stream up to and including it. Returns the number of rows
-- added, or an error if the lock is not the caller's (it expired and another loader took it).
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('NOTLOADER the loader lock is held by another node')
end
local last = tonumber(redis.call('HGET', KEYS[2], 'loaded_to') or '0')
local rows = tonumber(redis.call('HGET', KEYS[2], 'rows') or '0')
local added = 0
local last_chunk = nil
for i = 4, #ARGV, 4 do
  if tonumber(ARGV[i]) > last then
    local n = tonumber(ARGV[i + 2])
    rows = rows + n
    added = added + n
    redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'last', ARGV[i + 1], 'upto', rows, 'rows', ARGV[i + 3])
    last = tonumber(ARGV[i + 1])
    last_chunk = ARGV[i]
  end
end
if last_chunk then
  redis.call('HSET', KEYS[2], 'loaded_to', ARGV[#ARGV - 2], 'last_chunk', last_chunk, 'rows', rows)
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], 'loaded', '1')
  redis.call('DEL', KEYS[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return added
