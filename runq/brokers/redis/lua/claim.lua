-- claim.lua: take up to `limit` ready tasks of one queue for one worker.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         worker id, limit, lease (s), token prefix (random, per call), batch
-- Returns      {{id, payload, attempt, token}, ...} in claim order, then (as plain strings)
--              up to 20 outbox steps posted over OUTBOX_GRACE s ago and not yet applied (a
--              process died between a script and its follow-up): the caller applies them
-- Guarantees   in this one atomic step, first up to `batch` finished tasks past their
--              result_ttl are deleted, up to `batch` expired leases reclaimed (back to
--              pending with error WorkerLost; the lost run stays counted in attempts, so
--              the worker can fail a poison pill) and up to `batch` due scheduled tasks
--              promoted; then the claimed tasks are running with attempts + 1, a fresh
--              fencing token and lease_until = now + lease. Idle workers are woken when
--              ready tasks are left over; the wake list is emptied when none are.

local worker, limit, lease, prefix, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = clock()
trim(now, batch)

local readied = 0
local lost = redis.call('ZRANGEBYSCORE', Q.running, '-inf', '(' .. stamp(now), 'LIMIT', 0, batch)
for _, id in ipairs(lost) do
  local rec = load(id)
  rec.error, rec.token, rec.lease_until, rec.ready_at = WORKER_LOST, nil, nil, stamp(now)
  make_ready(id, rec)
  save(id, rec)
  readied = readied + 1
end
count('retried', #lost)

for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.scheduled, '-inf', stamp(now), 'LIMIT', 0, batch)) do
  local rec = load(id)
  make_ready(id, rec)
  save(id, rec)
  readied = readied + 1
end

local claims = {}
local until_ = stamp(now + lease)
local found = redis.call('ZRANGE', Q.pending, 0, limit - 1, 'WITHSCORES')
if #found > 0 then
  local ids = {}
  for i = 1, #found, 2 do
    ids[#ids + 1] = found[i]
  end
  local records = redis.call('HMGET', Q.tasks, unpack(ids))
  local payloads = redis.call('HMGET', Q.payloads, unpack(ids))
  local running, saved = {}, {}
  for i, id in ipairs(ids) do
    local rec = records[i] and cjson.decode(records[i]) or fresh(id, tonumber(found[2 * i]))
    rec.attempts = rec.attempts + 1
    rec.token, rec.worker, rec.started_at, rec.lease_until = prefix .. i, worker, stamp(now), until_
    rec.status = 'running'
    if rec.watched then
      changed(id, rec)
    end
    running[#running + 1] = until_
    running[#running + 1] = id
    saved[#saved + 1] = id
    saved[#saved + 1] = cjson.encode(rec)
    claims[i] = {id, payloads[i] or '', rec.attempts, rec.token}
  end
  redis.call('ZREM', Q.pending, unpack(ids))
  redis.call('ZADD', Q.running, unpack(running))
  redis.call('HSET', Q.tasks, unpack(saved))
end

local left = redis.call('ZCARD', Q.pending)
if left == 0 then
  redis.call('DEL', Q.wake)
elseif readied > 0 then
  wake(left)
end
for _, step in ipairs(redis.call('ZRANGEBYSCORE', Q.outbox, '-inf', stamp(now - OUTBOX_GRACE), 'LIMIT', 0, 20)) do
  redis.call('ZADD', Q.outbox, now, step)  -- handed out: not again before the grace passes
  claims[#claims + 1] = step
end
return claims
