-- cancel.lua: cancel one task that is not final yet.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- KEYS[EXTRA+1] runq:{q}:done:<id> (its waiters' notification list)
-- ARGV         id, error JSON to record
-- Returns      {1 when cancelled, 0 when the task is unknown, expired or already final,
--              then the outbox steps posted and waiters to wake for its dependents}
-- Guarantees   a pending or scheduled task never runs; a running one loses its claim
--              (token cleared: its renew and settle answer 0). The task is kept for
--              its result_ttl, then deleted; waiters are woken. Its waiting dependents are
--              cancelled too (here, or through posted steps for other queues).

local id = ARGV[1]
local now = clock()
reserve_due(now, 100)  -- due tasks were ready before any its slot lets out
local rec = load(id)
if not live(rec, now) or FINAL[rec.status] then
  return {0}
end
redis.call('HDEL', Q.parents, id)
rec.error, rec.settled = ARGV[2], nil
local ttl = rec.result_ttl  -- a never-claimed task has no record: its payload knows
if not ttl then
  ttl = cjson.decode(redis.call('HGET', Q.payloads, id) or '{}').result_ttl or DEFAULT_RESULT_TTL
end
finish(id, rec, 'cancelled', now, now + ttl)
save(id, rec)
release_freed(now)  -- a pending or running task of a concurrency slot gave its seat up
notify(id, KEYS[EXTRA + 1], rec)
count('cancelled', 1)
release_children(id, dependency_error(id, 'was cancelled'), now)
order_ready()
local answer = {1}
for _, step in ipairs(EFFECTS) do
  answer[#answer + 1] = step
end
return answer
