-- retry.lua: put one failed or cancelled task back to pending (App.retry).
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         id
-- Returns      1 when requeued, 0 when the task is unknown, expired, or not failed/cancelled
-- Guarantees   attempts restart at 0; result, error, times, expiry and deadline are cleared; the
--              task queues behind the tasks ready before it and an idle worker is woken.

local id = ARGV[1]
local now = clock()
reserve_due(now, 100)  -- due tasks were ready before this one
local rec = load(id)
if not live(rec, now) or (rec.status ~= 'failed' and rec.status ~= 'cancelled') then
  return 0
end
if rec.deadline then  -- a task put back by hand runs, whatever its expiry said
  redis.call('ZREM', Q.deadlines, id)
  rec.deadline = nil
end
rec.attempts, rec.token, rec.lease_until, rec.result, rec.error, rec.settled = 0, nil, nil, nil, nil, nil
rec.started_at, rec.finished_at, rec.expires_at, rec.ready_at = nil, nil, nil, stamp(now)
make_ready(id, rec)
save(id, rec)
wake(1)
return 1
