-- metrics.lua: add one worker's per-task metric deltas to its queue's fleet-wide totals.
--
-- KEYS[1]      runq:{<queue>}:metrics  hash "<series>:<task>" -> total (runq/observe/task_metrics.py)
-- ARGV         field, delta, field, delta, ...
-- Returns      the number of fields added to
-- Guarantees   one worker's flush for a queue is applied whole or not at all; totals only
--              grow (deltas are never negative), so Prometheus reads them as counters.

for i = 1, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
