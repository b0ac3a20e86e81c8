-- rate.lua: take a run slot from the rate limit of one task name (GCRA, no burst).
--
-- KEYS[1]      runq:rate:{<task name>}  hash tat (when the next run may start), tail
--              (the slot handed to the last caller told to wait)
-- ARGV         interval (s): per / rate
-- Returns      "0" when the caller may run now, else the seconds to wait (a string: Redis
--              would truncate a Lua number), the next free slot after the last one given
-- Guarantees   runs of that name start at least interval apart across all workers; the
--              key expires once idle, so an unused limit leaves nothing behind.

local interval = tonumber(ARGV[1])
local now = clock()
local state = redis.call('HMGET', KEYS[1], 'tat', 'tail')
local tat, tail = tonumber(state[1]) or now, tonumber(state[2]) or now
local wait = 0
if tat <= now then
  tat = now + interval
else
  local slot = math.max(tail, tat)
  tail, wait = slot + interval, slot - now
end
redis.call('HSET', KEYS[1], 'tat', stamp(tat), 'tail', stamp(tail))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(tat, tail) - now) * 1000) + 60000)
return stamp(wait)
