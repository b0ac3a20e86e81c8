-- unwatch.lua: a waiter stops waiting on a task.
--
-- KEYS[1..22]  the queue's keys (lib.lua)
-- KEYS[23]     runq:{q}:done:<id>
-- ARGV         id, woke ("1" when this waiter consumed the wake-up token)
-- Returns      the number of waiters left
-- Guarantees   a consumed token is pushed back (it expires after 10 s) so every other
--              waiter on the same task wakes too; waiters never counts below zero.

local id = ARGV[1]
local left = redis.call('HINCRBY', Q.waiters, id, -1)
if left <= 0 then
  redis.call('HDEL', Q.waiters, id)
end
if ARGV[2] == '1' then
  redis.call('LPUSH', KEYS[EXTRA + 1], '1')
  redis.call('LTRIM', KEYS[EXTRA + 1], 0, 0)
  redis.call('PEXPIRE', KEYS[EXTRA + 1], 10000)
end
return math.max(left, 0)
