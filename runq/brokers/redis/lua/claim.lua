-- claim.lua: take up to `limit` ready tasks of one queue for one worker.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         worker id, limit, lease (s), token prefix (random, per call), batch
-- Returns      {{id, payload, attempt, token}, ...} in claim order, then (as plain strings)
--              up to 20 outbox steps posted over OUTBOX_GRACE s ago and not yet applied (a
--              process died between a script and its follow-up), and the steps this call
--              posted (dependents of expired tasks, waiters to wake): the caller applies them
-- Guarantees   in this one atomic step, first up to `batch` finished tasks past their
--              result_ttl are deleted, due scheduled tasks take their place in the ready
--              order (lib.lua: reserve_due), up to `batch` expired leases reclaimed (back to
--              pending with error WorkerLost; the lost run stays counted in attempts, so
--              the worker can fail a poison pill), up to `batch` pending or scheduled tasks
--              past their deadline cancelled (Expired) and up to `batch` due scheduled tasks
--              promoted; then, unless the queue is paused, the claimed tasks are running with
--              attempts + 1, a fresh fencing token and lease_until = now + lease. A candidate
--              past its deadline expires instead; one whose concurrency slot has its limit of
--              runs is held (lib.lua: hold), at most limit + batch candidates looked at. Slots
--              that tasks gave up release held tasks. Idle workers are woken when ready tasks
--              are left over; the wake list is emptied when none are (or the queue is paused).
--              A queue without expiring or limited tasks pays two O(1) reads for all this.

local worker, limit, lease, prefix, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = clock()
trim(now, batch)
reserve_due(now, batch)  -- due tasks were ready before any this claim takes back

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

for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.deadlines, '-inf', stamp(now), 'LIMIT', 0, batch)) do
  local rec = load(id)
  if rec and (rec.status == 'pending' or rec.status == 'scheduled') then
    expire(id, rec, now)
  else
    redis.call('ZREM', Q.deadlines, id)
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.scheduled, '-inf', stamp(now), 'LIMIT', 0, batch)) do
  local rec = load(id)
  make_ready(id, rec, rec.due)
  save(id, rec)
  readied = readied + 1
end
release_freed(now)
order_ready()  -- all ready now (taken back, let out of their slot): in enqueue order

local claims = {}
local paused = redis.call('EXISTS', Q.paused) == 1
local until_ = stamp(now + lease)
local examined = 0
while not paused and #claims < limit do
  local want = limit - #claims
  local found = redis.call('ZRANGE', Q.pending, 0, want - 1, 'WITHSCORES')
  if #found == 0 then
    break
  end
  local ids = {}
  for i = 1, #found, 2 do
    ids[#ids + 1] = found[i]
  end
  local records = redis.call('HMGET', Q.tasks, unpack(ids))
  local payloads = redis.call('HMGET', Q.payloads, unpack(ids))
  local plain, running, saved = {}, {}, {}
  for i, id in ipairs(ids) do
    local rec = records[i] and decode(records[i]) or fresh(id, tonumber(found[2 * i]))
    if rec.deadline and tonumber(rec.deadline) <= now then
      expire(id, rec, now)
    elseif rec.slot and seats(rec.slot, false) >= tonumber(rec.cap) then
      hold(id, rec)
    else
      rec.attempts = rec.attempts + 1
      rec.token, rec.worker, rec.started_at, rec.lease_until = prefix .. (#claims + 1), worker, stamp(now), until_
      rec.settled = nil  -- an earlier claim's settle is no longer recognised as applied
      if rec.slot or rec.deadline then
        enter(id, rec, 'running', until_)  -- its seat and deadline follow (lib.lua: flow_enter)
      else
        rec.status = 'running'
        if rec.watched then
          changed(id, rec)
        end
        plain[#plain + 1] = id
        running[#running + 1] = until_
        running[#running + 1] = id
      end
      saved[#saved + 1] = id
      saved[#saved + 1] = encode(rec)
      claims[#claims + 1] = {id, payloads[i] or '', rec.attempts, rec.token}
    end
  end
  if #plain > 0 then
    redis.call('ZREM', Q.pending, unpack(plain))
    redis.call('ZADD', Q.running, unpack(running))
  end
  if #saved > 0 then
    redis.call('HSET', Q.tasks, unpack(saved))
  end
  examined = examined + #ids
  if #ids < want or examined >= limit + batch then
    break
  end
end
release_freed(now)
order_ready()

local left = redis.call('ZCARD', Q.pending)
if left == 0 or paused then
  redis.call('DEL', Q.wake)
elseif readied > 0 or examined >= limit + batch then  -- (a scan cut short: another worker goes on)
  wake(left)
end
for _, step in ipairs(redis.call('ZRANGEBYSCORE', Q.outbox, '-inf', stamp(now - OUTBOX_GRACE), 'LIMIT', 0, 20)) do
  redis.call('ZADD', Q.outbox, now, step)  -- handed out: not again before the grace passes
  claims[#claims + 1] = step
end
for _, step in ipairs(EFFECTS) do
  claims[#claims + 1] = step
end
return claims
