-- unwatch.lua: a waiter that timed out stops waiting on a task.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         id
-- Returns      the number of waiters left
-- Guarantees   waiters never counts below zero (a notification may have reset it).

local id = ARGV[1]
local left = redis.call('HINCRBY', Q.waiters, id, -1)
if left <= 0 then
  redis.call('HDEL', Q.waiters, id)
end
return math.max(left, 0)
