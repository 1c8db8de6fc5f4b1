-- A block of turns from a rate shared by the fleet: GCRA on Redis's clock.
--
-- KEYS[1] the gate: its theoretical arrival time, microseconds.
-- ARGV[1] the interval between turns (µs), ARGV[2] the turns wanted, ARGV[3] how far ahead of
-- now turns may be taken (µs): the block a node takes at a time.
--
-- Turns are granted only up to `now + ahead` on the gate's schedule, so over any span T the
-- fleet gets at most T / interval + ahead / interval turns, however many nodes ask: the
-- overshoot is one block, and a node that takes turns and dies wastes them (undershoot), never
-- more. Returns the turns granted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local interval = tonumber(ARGV[1])
local room = math.floor((now + tonumber(ARGV[3]) - tat) / interval)
local grant = math.min(tonumber(ARGV[2]), math.max(0, room))
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 60000)
end
return grant
