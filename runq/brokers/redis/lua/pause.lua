-- pause.lua: pause or resume one queue (SPEC §9).
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS)
-- ARGV         "1" to pause, "0" to resume
-- Returns      1 when the queue changed, 0 when it already was so
-- Guarantees   while `paused` exists, claim.lua takes no task of the queue (in its own atomic
--              step, so no claim that follows the pause starts one); resuming wakes as many
--              idle workers as there are pending tasks.

if ARGV[1] == '1' then
  return redis.call('SET', Q.paused, '1', 'NX') and 1 or 0
end
local removed = redis.call('DEL', Q.paused)
if removed == 1 then
  wake(redis.call('ZCARD', Q.pending))
end
return removed
