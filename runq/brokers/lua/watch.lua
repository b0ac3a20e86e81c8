-- watch.lua: read a task and, unless it is final, register a waiter on it.
--
-- KEYS[1..22]  the queue's keys (lib.lua)
-- ARGV         id, register ("1": count this client in waiters when not final)
-- Returns      {record JSON, payload}, or nil when the task is unknown or expired
-- Guarantees   atomic with every state change: a task that becomes final after this
--              call pushes to runq:{q}:done:<id>, so a waiter that blocks on that list
--              next never misses its wake-up.

local id = ARGV[1]
local rec = load(id)
if not live(rec, clock()) then
  return nil
end
if ARGV[2] == '1' and not FINAL[rec.status] then
  redis.call('HINCRBY', Q.waiters, id, 1)
end
return {cjson.encode(rec), redis.call('HGET', Q.payloads, id) or ''}
