-- trim.lua: delete finished tasks of one queue whose result_ttl has passed.
--
-- KEYS[1..22]  the queue's keys (lib.lua)
-- ARGV         limit
-- Returns      the number of tasks deleted (at most limit)
-- Guarantees   the same clean-up claim and settle do, for readers (stats) so counts
--              do not include expired tasks while no worker runs.

return trim(clock(), tonumber(ARGV[1]))
