-- link.lua: register a waiting task (of another queue) as a dependent of a task of this one.
--
-- KEYS         the parent's queue's keys (keys.py: FUNCTIONS)
-- ARGV         child id, parent id
-- Returns      the outbox steps posted: a resolve step for the child when the parent has
--              already ended (succeeded: release; otherwise the error that cancels it, which
--              a child waiting in the after_final mode ignores: resolve.lua)
-- Guarantees   repeatable (a child is listed once); atomic with the parent's own end, so
--              the child is either listed before the parent ends or told it has ended.

local child, parent = ARGV[1], ARGV[2]
local now = clock()
local v = verdict(parent, load(parent), now)
if v == 'wait' then
  add_child(parent, child)
else
  post({op = 'resolve', child = child, parent = parent, error = v == 'ok' and '' or v})
end
return EFFECTS
