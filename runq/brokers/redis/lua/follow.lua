-- follow.lua: read a task and have its changes published from now on (Handle.events).
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS)
-- ARGV         id
-- Returns      {record JSON, payload}, or nil when the task is unknown or expired
-- Guarantees   atomic with every state change: the record read carries rec.v, the number
--              of the last change published, and every later change of its status or
--              progress is published (lib.lua: changed) numbered after it. The caller
--              subscribes to the task's channel before, so it misses none. A pending task
--              that was never claimed gets its record written (as claim would make it up).

local id = ARGV[1]
local rec = load(id)
if not live(rec, clock()) then
  return nil
end
if not rec.watched then
  rec.watched = 1
  save(id, rec)
end
return {cjson.encode(rec), redis.call('HGET', Q.payloads, id) or ''}
