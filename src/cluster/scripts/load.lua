-- Adds a batch of a campaign's rows to its stream, for the node holding the loader's lock.
--
-- KEYS[1] the rows stream, KEYS[2] the campaign's meta hash, KEYS[3] the loader's lock.
-- ARGV[1] the loader's token, ARGV[2] the lock's time to live (ms), ARGV[3] "1" if this is the
-- last batch (the input ends with it), then four arguments per row: line, address (may be
-- empty), payload, reason (empty for a good row; else the row is bad and payload is empty).
--
-- An entry's id is 0-LINE, the row's line: lines at or below the meta's `loaded_to` are already
-- in (a loader that took over from a dead one re-reads the file from the start) and are
-- skipped, so no row is added twice. Returns the number of rows added, or an error if the lock
-- is not the caller's (it expired and another loader took it).
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('NOTLOADER the loader lock is held by another node')
end
local loaded_to = tonumber(redis.call('HGET', KEYS[2], 'loaded_to') or '0')
local added = 0
local last = loaded_to
for i = 4, #ARGV, 4 do
  local line = tonumber(ARGV[i])
  if line > last then
    if ARGV[i + 3] == '' then
      redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'e', ARGV[i + 1], 'v', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'e', ARGV[i + 1], 'bad', ARGV[i + 3])
    end
    added = added + 1
    last = line
  end
end
if added > 0 then
  redis.call('HSET', KEYS[2], 'loaded_to', tostring(last))
  redis.call('HINCRBY', KEYS[2], 'rows', added)
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], 'loaded', '1')
  redis.call('DEL', KEYS[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return added
