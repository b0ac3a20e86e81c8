-- lib.lua: the helpers every runq function shares; not a function of its own.
--
-- In the Functions library (scripts.py) this is defined once, when the library loads, and
-- each function sets the shared Q, EXTRA and QUEUE, then calls begin(); as a script
-- (Redis < 7) it is prepended to each body. Either way the generated prologue
-- (keys.py: lua_prologue) comes first: Q maps each key
-- name to its KEYS[i] (only the keys this function is sent; keys.py lists them all),
-- EXTRA is how many those are, QUEUE the queue's name (nil for rate and breaker), and ENQ/SET/REN give the offsets of each per-item
-- argument. No Lua file numbers a key or an argument itself.
--
-- A task enqueued ready to run has no record: its payload and its place in `pending`
-- are all it needs until it is claimed (load() makes its record up), so a deep queue
-- costs two small entries per task and enqueue does no JSON work.
-- KEYS[EXTRA + i] are the script's own per-task keys, passed by the caller.
--
-- Times are seconds on the Redis clock (TIME) so skewed workers agree. Record
-- times are "%.6f" strings and the claim score a "%.0f" string: cjson would
-- round numbers to 14 digits.

local WAKE_CAP = 32
local SAMPLE_CAP = 4096
local TWO_44 = 17592186044416
local TWO_50 = 1125899906842624
local OUTBOX_GRACE = 5  -- seconds before claim hands an unapplied outbox step to its worker

-- Per call (begin): INDEX, the zset of each indexed state (by seq: enqueue order, list.lua);
-- PLACE, the zset that orders a task while it is in a state, for the states that have one;
-- EFFECTS, the steps posted; FREED, the concurrency slots whose tasks gave a seat up (slot ->
-- its limit); READIED, the tasks it made ready (order_ready).
local INDEX, PLACE, EFFECTS, FREED, READIED
local SEAT = {pending = 'p', running = 'r'}  -- the states that hold a seat of a slot
local FINAL = {succeeded = true, failed = true, cancelled = true}

-- The one clock of every function. SHIFT is 0: only a test moves it (tests/support/clock.py
-- appends a function that sets it to a library it loads; a script's copy is always 0).
local SHIFT = 0
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000 + SHIFT
end

local function stamp(t)
  return string.format('%.6f', t)
end

-- The record of a pending task that was never claimed, made up from its claim score
-- and the microsecond time in the first 13 of its id's 32 hex digits (runq.models).
local function fresh(id, score)
  local enqueued = stamp(tonumber(string.sub(id, -32, -20), 16) / 1000000)
  return {
    status = 'pending', attempts = 0, priority = 100 - math.floor(score / TWO_44), seq = score % TWO_44,
    score = string.format('%.0f', score), enqueued_at = enqueued, ready_at = enqueued,
  }
end

-- A finished record is kept for its result_ttl, so it is stored compact: one-letter
-- (upper-case: no field is named so) names for its fields, the status as a letter, a
-- priority of 0 left out, and without the fields only an unfinished task reads (its
-- claim score and ready_at: a retry sets both again). Every other record, and every record
-- a function hands back, keeps the long names; decode() reads both forms, so records an
-- older runq wrote read as before. bench/retention.py measures what this saves.
local SHORT = {
  status = 'S', attempts = 'A', priority = 'P', seq = 'Q', result = 'R', error = 'E', worker = 'W',
  settled = 'T', enqueued_at = 'N', started_at = 'B', finished_at = 'F', expires_at = 'X',
  result_ttl = 'L', progress = 'G',
}
local LONG = {  -- SHORT inverted (written out: a library's load cannot call pairs)
  S = 'status', A = 'attempts', P = 'priority', Q = 'seq', R = 'result', E = 'error', W = 'worker',
  T = 'settled', N = 'enqueued_at', B = 'started_at', F = 'finished_at', X = 'expires_at',
  L = 'result_ttl', G = 'progress',
}
local UNFINISHED_ONLY = {score = true, ready_at = true}
local STATUS_CODE = {succeeded = 's', failed = 'f', cancelled = 'c'}
local STATUS_OF = {s = 'succeeded', f = 'failed', c = 'cancelled'}

local function decode(raw)
  local rec = cjson.decode(raw)
  if rec.S == nil then
    return rec
  end
  local long = {}
  for name, value in pairs(rec) do
    long[LONG[name] or name] = value
  end
  long.status = STATUS_OF[rec.S] or rec.S
  long.priority = long.priority or 0
  return long
end

local function encode(rec)
  local code = STATUS_CODE[rec.status]
  if not code then
    return cjson.encode(rec)
  end
  local short = {}
  for name, value in pairs(rec) do
    if not UNFINISHED_ONLY[name] then
      short[SHORT[name] or name] = value
    end
  end
  short.S = code
  if short.P == 0 then
    short.P = nil
  end
  return cjson.encode(short)
end

local function load(id)
  local raw = redis.call('HGET', Q.tasks, id)
  if raw then
    return decode(raw)
  end
  local score = redis.call('ZSCORE', Q.pending, id)
  return score and fresh(id, tonumber(score)) or nil
end

local function save(id, rec)
  redis.call('HSET', Q.tasks, id, encode(rec))
end

-- A task that exists and has not outlived its result_ttl.
local function live(rec, now)
  return rec ~= nil and (rec.expires_at == nil or tonumber(rec.expires_at) > now)
end

-- A followed task (follow.lua set rec.watched) publishes each change of its status or
-- progress, numbered by rec.v, on its channel (keys.py: EVENTS); the caller saves rec.
-- For a task nobody follows this is one field test: no command.
local function changed(id, rec)
  rec.v = (rec.v or 0) + 1
  local change = {v = rec.v, status = rec.status, progress = rec.progress, at = stamp(clock())}
  redis.call('PUBLISH', string.format(EVENTS, QUEUE, id), cjson.encode(change))
end

-- Flow control (SPEC §9) for a task with an expiry or a concurrency limit (only those have
-- these fields, and always a record): its seat in its slot, its place among the tasks
-- that may expire, its hold. A task that gave its seat up frees the slot (release_freed).
local function flow_enter(id, rec, old, status)
  if rec.slot then
    if SEAT[old] then
      redis.call('ZREM', Q.slots, rec.slot .. '\0' .. SEAT[old] .. '\0' .. id)
    end
    if SEAT[status] then
      redis.call('ZADD', Q.slots, 0, rec.slot .. '\0' .. SEAT[status] .. '\0' .. id)
    elseif SEAT[old] then
      FREED[rec.slot] = rec.cap
    end
  end
  if rec.held then
    redis.call('ZREM', Q.held, rec.held)
    rec.held = nil
  end
  if rec.deadline then
    if status == 'pending' or status == 'scheduled' then
      redis.call('ZADD', Q.deadlines, rec.deadline, id)
    else
      redis.call('ZREM', Q.deadlines, id)
    end
  end
end

-- Move a task to `status`, placed at `score` in that state's ordering zset.
local function enter(id, rec, status, score)
  local old = rec.status
  if rec.slot or rec.deadline or rec.held then
    flow_enter(id, rec, old, status)
  end
  if old then
    if INDEX[old] then
      redis.call('ZREM', INDEX[old], id)
    end
    if PLACE[old] then
      redis.call('ZREM', PLACE[old], id)
    end
  end
  rec.status = status
  if INDEX[status] then
    redis.call('ZADD', INDEX[status], rec.seq, id)
  end
  if PLACE[status] then
    redis.call('ZADD', PLACE[status], score, id)
  end
  if rec.watched and old ~= status then
    changed(id, rec)
  end
end

-- A scheduled task is ready from its eta on: it takes its place in the ready order (a seq) at
-- the first call after its eta, before any task that call makes ready (enqueued, retried,
-- released, taken back, let out of its slot), as every broker orders ready tasks by the time
-- they became ready. Its status stays scheduled until a claim makes it pending, in that place:
-- meanwhile its score in `scheduled` is that seq - 2^50 (due, and promoted first, in order).
local function reserve_due(now, limit)
  local due = redis.call('ZRANGEBYSCORE', Q.scheduled, 0, stamp(now), 'LIMIT', 0, limit)
  if #due == 0 then
    return
  end
  local seq = redis.call('INCRBY', Q.seq, #due) - #due
  for i, id in ipairs(due) do
    local rec = load(id)
    rec.due = seq + i
    redis.call('ZADD', Q.scheduled, rec.due - TWO_50, id)
    save(id, rec)
  end
end

-- Let up to n idle workers know there is work; the list never exceeds WAKE_CAP.
local function wake(n)
  if n <= 0 then
    return
  end
  local tokens = {}
  for i = 1, math.min(n, WAKE_CAP) do
    tokens[i] = '1'
  end
  redis.call('LPUSH', Q.wake, unpack(tokens))
  redis.call('LTRIM', Q.wake, 0, WAKE_CAP - 1)
end

-- Queue a task behind every task of its priority that was ready before it (`seq`: its place
-- in the ready order, when it took it before: reserve_due).
local function make_ready(id, rec, seq)
  if not seq then
    seq = redis.call('INCR', Q.seq)
    READIED[#READIED + 1] = id
  end
  rec.due = nil
  rec.score = string.format('%.0f', (100 - rec.priority) * TWO_44 + seq)
  enter(id, rec, 'pending', rec.score)
end

-- Tasks this call made ready (at the same moment) queue in enqueue order, as on every broker
-- (ready tasks are ordered by priority, then the time they became ready, then enqueue order):
-- the seqs they were given are dealt out again in that order. Call it before reading `pending`.
local function order_ready()
  if #READIED > 1 then
    local tasks, seqs, seen = {}, {}, {}
    for _, id in ipairs(READIED) do
      local rec = not seen[id] and load(id)
      seen[id] = true
      if rec and rec.status == 'pending' then
        tasks[#tasks + 1] = {id, rec}
        seqs[#seqs + 1] = tonumber(rec.score) % TWO_44
      end
    end
    table.sort(seqs)
    table.sort(tasks, function(a, b) return a[2].seq < b[2].seq end)
    for i, task in ipairs(tasks) do
      local id, rec = task[1], task[2]
      local score = string.format('%.0f', (100 - rec.priority) * TWO_44 + seqs[i])
      if score ~= rec.score then
        rec.score = score
        redis.call('ZADD', Q.pending, score, id)
        save(id, rec)
      end
    end
  end
  READIED = {}
end

-- Call a variadic command with `args` in chunks (Lua's unpack has a stack limit).
local function variadic(command, key, args, step)
  for i = 1, #args, step do
    redis.call(command, key, unpack(args, i, math.min(#args, i + step - 1)))
  end
end

local function count(name, n)
  if n > 0 then
    redis.call('HINCRBY', Q.counters, name, n)
  end
end

-- The answer a waiter gets in its done list: the task's final state, so it needs no
-- second read after it wakes.
local function done_token(id, rec)
  return cjson.encode({cjson.encode(rec), redis.call('HGET', Q.payloads, id) or ''})
end

-- Wake the clients blocked in wait() on this (now final) task: one token per waiter
-- in its done list, gone after 10 s.
local function notify(id, done_key, rec)
  local waiters = tonumber(redis.call('HGET', Q.waiters, id) or '0')
  if waiters > 0 then
    local token = done_token(id, rec)
    for _ = 1, waiters do
      redis.call('RPUSH', done_key, token)
    end
    redis.call('PEXPIRE', done_key, 10000)
    redis.call('HDEL', Q.waiters, id)
  end
end

-- End a task: final status, no claim, kept until `expires` (nil: until purged).
local function finish(id, rec, status, now, expires)
  rec.token = nil
  rec.lease_until = nil
  rec.finished_at = stamp(now)
  rec.expires_at = expires and stamp(expires) or nil
  enter(id, rec, status, rec.expires_at)
end

-- Remove every trace of a task (its idempotency key expires on its own).
local function forget(id, rec)
  if rec then
    if INDEX[rec.status] then
      redis.call('ZREM', INDEX[rec.status], id)
    end
    if PLACE[rec.status] then
      redis.call('ZREM', PLACE[rec.status], id)
    end
  end
  if rec and (rec.slot or rec.deadline or rec.held) then
    flow_enter(id, rec, rec.status, 'gone')
  end
  redis.call('HDEL', Q.tasks, id)
  redis.call('HDEL', Q.payloads, id)
  redis.call('HDEL', Q.waiters, id)
  redis.call('HDEL', Q.children, id)
  redis.call('HDEL', Q.parents, id)
end

-- Delete up to `limit` finished tasks whose result_ttl has passed.
local function trim(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', Q.expiring, '-inf', stamp(now), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    forget(id, load(id))
    redis.call('ZREM', Q.expiring, id)
  end
  return #ids
end


-- -- workflows (after=) ---------------------------------------------------------------
-- A parent and its dependents may live in different slots. Whatever a script decides
-- for another queue is *posted*: kept in this queue's outbox and returned in EFFECTS;
-- the broker's Python applies it there (link.lua / resolve.lua, both repeatable) and
-- then removes it. A step left behind by a crash is handed out again by claim.lua.


local function queue_of(id)
  return string.match(id, '^(.*)%.[^.]*$')
end

local function dependency_error(parent, verb, cause)
  local message = 'parent task ' .. parent .. ' ' .. verb
  if cause then
    message = message .. ' (' .. cause .. ')'
  end
  return cjson.encode({type = 'DependencyFailed', message = message, parent = parent})
end

local function post(entry)
  local text = cjson.encode(entry)
  redis.call('ZADD', Q.outbox, clock(), text)
  EFFECTS[#EFFECTS + 1] = text
end

-- What parent `id`'s record means for a dependent linked to it now: 'ok', 'wait', or the error
-- the dependent ends with, in the words its end gave the tasks waiting on it then (rules.py:
-- link_verdict, parent_error). `final`: the dependent waits in the after_final mode, for which
-- any end, or a parent gone, is 'ok'.
local function verdict(id, rec, now, final)
  local here = live(rec, now)
  if here and rec.status ~= 'succeeded' and rec.status ~= 'failed' and rec.status ~= 'cancelled' then
    return 'wait'
  elseif final or (here and rec.status == 'succeeded') then
    return 'ok'
  elseif not here then
    return dependency_error(id, 'not found')
  elseif rec.status == 'failed' then
    return dependency_error(id, 'failed')
  end
  local ok, ended = pcall(cjson.decode, rec.error or '{}')
  local kind = ok and type(ended) == 'table' and ended.type or nil
  if kind == 'Expired' then
    return dependency_error(id, 'expired')
  elseif kind == 'DependencyFailed' then
    return dependency_error(id, 'was cancelled', tostring(ended.message))
  end
  return dependency_error(id, 'was cancelled')
end

-- Add `child` to the dependents of `parent` (a task of this queue), once.
local function add_child(parent, child)
  local raw = redis.call('HGET', Q.children, parent)
  local children = raw and cjson.decode(raw) or {}
  for _, known in ipairs(children) do
    if known == child then
      return
    end
  end
  children[#children + 1] = child
  redis.call('HSET', Q.children, parent, cjson.encode(children))
end

-- A waiting task whose parents all succeeded: pending now, or scheduled for its delay (`seq`:
-- its place in the ready order, for a task its own enqueue releases).
local function release(id, rec, now, seq)
  if tonumber(rec.ready_at) > now then
    enter(id, rec, 'scheduled', rec.ready_at)
  else
    rec.ready_at = stamp(now)
    make_ready(id, rec, seq)
    wake(1)
  end
end

local resolve

-- `parent` (a task of this queue) ended: its dependents here are resolved now, the
-- others through the outbox. err is nil when it succeeded, else the error they get.
local function release_children(parent, err, now)
  local raw = redis.call('HGET', Q.children, parent)
  if not raw then
    return
  end
  redis.call('HDEL', Q.children, parent)
  local children = cjson.decode(raw)
  table.sort(children)  -- in id order, as every broker
  for _, child in ipairs(children) do
    if queue_of(child) == QUEUE then
      resolve(child, parent, err, now)
    else
      post({op = 'resolve', child = child, parent = parent, error = err or ''})
    end
  end
end

-- One parent of `child` (a task of this queue) ended. Repeatable: a child that is no
-- longer waiting, or no longer lists that parent, is left alone. A child waiting in the
-- after_final mode (rec.after_final) takes no error: the parent only counts as ended
-- (rules.py: passed_on).
resolve = function(child, parent, err, now)
  local rec = load(child)
  if not rec or rec.status ~= 'waiting' then
    return
  end
  local raw = redis.call('HGET', Q.parents, child)
  local left, found = {}, false
  for _, p in ipairs(raw and cjson.decode(raw) or {}) do
    if p == parent then
      found = true
    else
      left[#left + 1] = p
    end
  end
  if not found then
    return
  end
  if rec.after_final then
    err = nil
  end
  if err then
    redis.call('HDEL', Q.parents, child)
    rec.error = err
    finish(child, rec, 'cancelled', now, now + rec.result_ttl)
    save(child, rec)
    count('cancelled', 1)
    if redis.call('HEXISTS', Q.waiters, child) == 1 then
      EFFECTS[#EFFECTS + 1] = cjson.encode({op = 'notify', child = child})
    end
    release_children(child, dependency_error(child, 'was cancelled', cjson.decode(err).message), now)
  elseif #left > 0 then
    redis.call('HSET', Q.parents, child, cjson.encode(left))
  else
    redis.call('HDEL', Q.parents, child)
    release(child, rec, now)
    save(child, rec)
  end
end

-- -- flow control: expiry, concurrency slots, debounce (SPEC §9) ------------------------------

-- A pending or scheduled task past its deadline: cancelled (Expired), its dependents with it.
local function expire(id, rec, now)
  rec.error, rec.settled = EXPIRED, nil
  local ttl = rec.result_ttl or DEFAULT_RESULT_TTL
  finish(id, rec, 'cancelled', now, now + ttl)
  save(id, rec)
  count('cancelled', 1)
  if redis.call('HEXISTS', Q.waiters, id) == 1 then
    EFFECTS[#EFFECTS + 1] = cjson.encode({op = 'notify', child = id})
  end
  release_children(id, dependency_error(id, 'expired'), now)
end

-- Runs of a slot (its running seats), or with `all` its pending and running ones.
local function seats(slot, all)
  local prefix = all and (slot .. '\0') or (slot .. '\0r\0')
  return redis.call('ZLEXCOUNT', Q.slots, '[' .. prefix, '(' .. string.sub(prefix, 1, -2) .. '\1')
end

-- The slot has its limit of runs: scheduled without an eta (score +inf, ready_at "inf") until a
-- seat frees; listed in `held` by slot, then claim order. The claim used no attempt.
local function hold(id, rec)
  local member = rec.slot .. '\0' .. string.format('%020.0f', tonumber(rec.score)) .. '\0' .. id
  enter(id, rec, 'scheduled', '+inf')
  rec.ready_at, rec.held = 'inf', member
  redis.call('ZADD', Q.held, 0, member)
  save(id, rec)
end

-- Into every slot this call freed, release held tasks (highest priority, then oldest) for
-- the seats its limit leaves beyond its pending and running tasks; they are ready now.
local function release_freed(now)
  local slots = {}
  for slot, cap in pairs(FREED) do
    slots[#slots + 1] = {slot, cap}
  end
  FREED = {}
  local woken = 0
  for _, entry in ipairs(slots) do
    local slot = entry[1]
    local free = tonumber(entry[2]) - seats(slot, true)
    if free > 0 then
      for _, member in ipairs(redis.call('ZRANGEBYLEX', Q.held, '[' .. slot .. '\0', '(' .. slot .. '\1', 'LIMIT', 0, free)) do
        local id = string.sub(member, -(#QUEUE + 33))
        local rec = load(id)
        if rec and rec.held == member then
          rec.ready_at = stamp(now)
          make_ready(id, rec)
          save(id, rec)
          woken = woken + 1
        else
          redis.call('ZREM', Q.held, member)
        end
      end
    end
  end
  wake(woken)
end

-- A task with flow fields (`flow`: ENQUEUE_ITEM's JSON) gets them on its record.
local function set_flow(id, rec, flow, now)
  if rec.deadline then
    redis.call('ZREM', Q.deadlines, id)
  end
  rec.deadline = flow.e and stamp(now + flow.e) or nil
  rec.slot, rec.cap = flow.s, flow.n
end

-- Called first by every function, once Q is set: the per-call state above.
local function begin()
  INDEX = {
    waiting = Q.waiting, scheduled = Q.scheduled_seq, succeeded = Q.succeeded, failed = Q.failed,
    cancelled = Q.cancelled,
  }
  PLACE = {
    pending = Q.pending, scheduled = Q.scheduled, running = Q.running,
    succeeded = Q.expiring, cancelled = Q.expiring,
  }
  EFFECTS, FREED, READIED = {}, {}, {}
end
