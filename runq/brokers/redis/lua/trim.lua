-- trim.lua: delete finished tasks of one queue whose result_ttl has passed.
--
-- KEYS         the queue's keys (keys.py: FUNCTIONS)
-- ARGV         limit
-- Returns      {the number of tasks deleted (at most limit), now on the Redis clock as a string}
-- Guarantees   the same clean-up claim and settle do, for readers (stats) so counts
--              do not include expired tasks while no worker runs. The clock is read here so
--              stats needs no TIME (which has no key, so no node, on Redis Cluster).

local now = clock()
return {trim(now, tonumber(ARGV[1])), stamp(now)}
