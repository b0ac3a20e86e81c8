-- settle.lua: apply the outcomes of claims of one queue.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- KEYS[EXTRA+i] runq:{q}:done:<id> of the i-th outcome (its waiters' notification list)
-- ARGV         per outcome (keys.py SETTLE_ITEM): id, token, kind, result, error, delay (s), result_ttl (s), uncount,
--              runtime (s the run took, measured by the worker; -1 when unknown)
--              kind: succeeded | retry | failed | release; "" for no result / no error
-- Returns      1 per outcome when applied, 2 when this very outcome was applied before (a
--              repeat), 0 when the fencing token is stale; then the outbox steps posted and
--              waiters to wake for dependents (lib.lua)
-- Guarantees   an outcome applies only to a running task whose token matches, once: the
--              token is cleared, and kept as `settled` (until the task is claimed again,
--              cancelled, expires or is retried by hand, as every broker keeps its token). A repeat is answered 2 and changes
--              nothing: a worker whose settle timed out (Redis paused past the socket timeout:
--              the command was in Redis's buffer and ran on resume) sends it again, and that
--              must not read as "cancelled or taken over" (it was answered 0 before). succeeded keeps the result for result_ttl (then the task
--              is deleted); retry is scheduled delay s from now (pending at once for 0);
--              failed is kept until purged; release goes back to its place in pending,
--              giving its attempt back when uncount is "1" (scheduled delay s from now when
--              delay > 0: held by a rate limit or breaker). Waiters on a task that became
--              final are woken. A succeeded task releases its dependents of this queue whose
--              parents all succeeded; a failed one cancels them (cascading); dependents in
--              other queues get a posted step. A run of a concurrency-limited task that ended
--              frees its seat: held tasks of its slot are released (lib.lua: release_freed).
--              Also deletes up to 100 tasks past their result_ttl. (An outcome's breaker is
--              driven by breaker.lua in the same round trip: its key has its own hash tag.)

local now = clock()
trim(now, 100)
reserve_due(now, 100)  -- due tasks were ready before any this settle makes ready

local samples, counts, woken = {}, {succeeded = 0, retried = 0, failed = 0}, 0

local function apply(id, rec, i, n)
  local kind, result, err = ARGV[i + SET.kind], ARGV[i + SET.result], ARGV[i + SET.error]
  rec.settled = ARGV[i + SET.token]
  local runtime = tonumber(ARGV[i + SET.runtime])
  if runtime >= 0 and kind ~= 'release' then  -- a prefetched task started after its claim
    rec.started_at = stamp(now - runtime)
  end
  if kind == 'succeeded' then
    local started = tonumber(rec.started_at)
    samples[#samples + 1] = string.format('%.6f %.6f %.6f', now, math.max(0, started - tonumber(rec.ready_at)), now - started)
    rec.result, rec.error = result ~= '' and result or nil, nil
    finish(id, rec, 'succeeded', now, now + tonumber(ARGV[i + SET.result_ttl]))
    notify(id, KEYS[EXTRA + n], rec)
    counts.succeeded = counts.succeeded + 1
    release_children(id, nil, now)
  elseif kind == 'retry' then
    local delay = tonumber(ARGV[i + SET.delay])
    rec.token, rec.lease_until, rec.error = nil, nil, err ~= '' and err or nil
    if delay > 0 then
      rec.ready_at = stamp(now + delay)
      enter(id, rec, 'scheduled', rec.ready_at)
    else
      rec.ready_at = stamp(now)
      make_ready(id, rec)
      woken = woken + 1
    end
    counts.retried = counts.retried + 1
  elseif kind == 'failed' then
    rec.error = err ~= '' and err or nil
    finish(id, rec, 'failed', now, nil)
    notify(id, KEYS[EXTRA + n], rec)
    counts.failed = counts.failed + 1
    release_children(id, dependency_error(id, 'failed'), now)
  else
    rec.token, rec.lease_until, rec.started_at = nil, nil, nil
    if ARGV[i + SET.uncount] == '1' then
      rec.attempts = rec.attempts - 1
    end
    local delay = tonumber(ARGV[i + SET.delay])
    if delay > 0 then
      rec.ready_at = stamp(now + delay)
      enter(id, rec, 'scheduled', rec.ready_at)
    else
      enter(id, rec, 'pending', rec.score)
      woken = woken + 1
    end
  end
end

local ids = {}
for i = 1, #ARGV, SET_N do
  ids[#ids + 1] = ARGV[i + SET.id]
end
local records = redis.call('HMGET', Q.tasks, unpack(ids))
local accepted, saved = {}, {}
for n, id in ipairs(ids) do
  local i = SET_N * (n - 1) + 1
  local rec = records[n] and decode(records[n])
  if rec and rec.status == 'running' and rec.token == ARGV[i + SET.token] then
    apply(id, rec, i, n)
    saved[#saved + 1] = id
    saved[#saved + 1] = encode(rec)
    accepted[n] = 1
  elseif rec and rec.settled == ARGV[i + SET.token] and live(rec, now) then  -- (past its result_ttl: gone)
    accepted[n] = 2
  else
    accepted[n] = 0
  end
end
variadic('HSET', Q.tasks, saved, 2000)
for name, k in pairs(counts) do
  count(name, k)
end
wake(woken)
release_freed(now)  -- slots whose runs ended release their held tasks
order_ready()  -- retried, released and let-out tasks, all ready now: in enqueue order
if #samples > 0 then  -- latency samples and per-second throughput for stats()
  variadic('LPUSH', Q.samples, samples, 2000)
  redis.call('LTRIM', Q.samples, 0, SAMPLE_CAP - 1)
  local second = math.floor(now)
  redis.call('HINCRBY', Q.throughput, second, #samples)
  if redis.call('HLEN', Q.throughput) > 120 then
    for _, field in ipairs(redis.call('HKEYS', Q.throughput)) do
      if tonumber(field) < second - 60 then
        redis.call('HDEL', Q.throughput, field)
      end
    end
  end
end
for _, step in ipairs(EFFECTS) do
  accepted[#accepted + 1] = step
end
return accepted
