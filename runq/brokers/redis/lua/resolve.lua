-- resolve.lua: one parent (of another queue) of a waiting task of this queue has ended.
--
-- KEYS         the child's queue's keys (keys.py: FUNCTIONS)
-- ARGV         child id, parent id, error JSON ("" when the parent succeeded)
-- Returns      the outbox steps posted and the waiters to wake (lib.lua: the child's own
--              dependents elsewhere, when it was cancelled)
-- Guarantees   repeatable: only a waiting child that still lists that parent changes. With
--              no parent left it becomes pending (scheduled while its delay runs); with an
--              error it is cancelled, and its dependents with it (not a child waiting in the
--              after_final mode: for it the parent has ended, whatever the error).

local now = clock()
reserve_due(now, 100)  -- due tasks were ready before the child
resolve(ARGV[1], ARGV[2], ARGV[3] ~= '' and ARGV[3] or nil, now)
order_ready()
return EFFECTS
