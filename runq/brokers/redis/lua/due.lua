-- due.lua: how long an idle worker may block on one queue.
--
-- KEYS         the queue's scheduled, running and deadlines zsets (keys.py: FUNCTIONS)
-- ARGV         (none)
-- Returns      seconds (a string) until the earliest scheduled task is due, lease ends or
--              task expires, "-1" when there is none
-- Guarantees   read on the Redis clock of the node that owns the queue, so it works on
--              Redis Cluster, where TIME has no key to route by.

local now, due = clock(), nil
for _, zset in ipairs({Q.scheduled, Q.running, Q.deadlines}) do
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if first[2] and first[2] ~= 'inf' and (due == nil or tonumber(first[2]) < due) then  -- inf: held, no time
    due = tonumber(first[2])
  end
end
return due and stamp(math.max(0, due - now)) or '-1'
