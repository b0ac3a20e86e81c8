-- enqueue.lua: store a batch of new tasks of one queue.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- KEYS[EXTRA+] runq:{q}:key:<key>, one per message that has an idempotency key, in order
-- ARGV[1]      key_ttl in milliseconds
-- ARGV[2..]    per message (keys.py ENQUEUE_ITEM): id, payload, priority, delay (s), result_ttl (s), has_key ("1"/"0"),
--              after (JSON list of parent ids, or {"final": [ids]} to wait in the after_final
--              mode: released once every parent is final, never cancelled by one; "" for none),
--              flow (JSON {e, d, s, n}: expires,
--              debounce, concurrency slot and limit; "" for none)
-- Returns      one id per message: its own, or that of the live task already holding its key;
--              then the outbox steps posted (lib.lua: link steps for parents in other queues)
-- Guarantees   the whole batch or nothing (one script); delay > 0 makes it scheduled at
--              now + delay on the Redis clock, else pending behind the tasks ready before it
--              (scheduled tasks past their eta included: lib.lua reserve_due)
--              (a pending task is only its payload and its place in `pending`);
--              a key is held for key_ttl and only while its task exists and has not expired.
--              A task with parents is waiting: parents of this queue are checked here (one
--              that already failed cancels it at once, succeeded ones are not waited on; in
--              the after_final mode none cancels it and final ones are not waited on);
--              parents elsewhere are linked by the posted steps.
--              A task with flow fields always has a record (lib.lua: flow_enter keeps its
--              seat and deadline). A debounced message whose key is held by a task that has
--              not started (pending or scheduled, no attempt) replaces it: payload, priority,
--              flow fields, eta now + delay, the key's hold renewed; its id is returned. A
--              key held by a task that started goes to the new task.

local key_ttl_ms = ARGV[1]
local now = clock()
reserve_due(now, 100)  -- due tasks were ready before any of these
local n = (#ARGV - 1) / ENQ_N
local seq = redis.call('INCRBY', Q.seq, n) - n
local ids, batch, ready_args, payload_args = {}, {}, {}, {}
local keyed, added, readied, queued = 0, 0, 0, 0

-- Write the batch's deferred pending entries and payloads (one variadic command each), now: at
-- the end, or before a debounce reads or replaces a task enqueued earlier in this batch.
local function flush()
  variadic('ZADD', Q.pending, ready_args, 2000)
  variadic('HSET', Q.payloads, payload_args, 2000)
  queued = queued + #ready_args / 2
  ready_args, payload_args = {}, {}
end

-- Replace the task holding a debounced message's key, if it has not started; true when it did.
local function debounce(holder, i, flow)
  local rec = load(holder)
  if not rec or (rec.status ~= 'pending' and rec.status ~= 'scheduled') or rec.attempts ~= 0 then
    return false
  end
  rec.ready_at, rec.due = stamp(now + tonumber(ARGV[i + ENQ.delay])), nil
  enter(holder, rec, 'scheduled', rec.ready_at)
  set_flow(holder, rec, flow, now)
  if rec.deadline then
    redis.call('ZADD', Q.deadlines, rec.deadline, holder)
  end
  rec.priority, rec.result_ttl = tonumber(ARGV[i + ENQ.priority]), tonumber(ARGV[i + ENQ.result_ttl])
  rec.seq = rec.seq or (rec.score and tonumber(rec.score) % TWO_44)
  save(holder, rec)
  redis.call('HSET', Q.payloads, holder, ARGV[i + ENQ.payload])
  return true
end
-- A new task waits for its parents; returns false when one of them already ended badly.
local function wait_for(id, rec, after)
  local waiting, elsewhere, seen = {}, {}, {}
  local parents = cjson.decode(after)
  if parents.final then
    parents, rec.after_final = parents.final, true
  end
  for _, parent in ipairs(parents) do
    if not seen[parent] then
      seen[parent] = true
      if queue_of(parent) ~= QUEUE then
        waiting[#waiting + 1] = parent
        elsewhere[#elsewhere + 1] = parent
      else
        local found = load(parent)  -- nil for a ready task of this batch not written yet: it waits
        local v = (found == nil and batch[parent]) and 'wait' or verdict(parent, found, now, rec.after_final)
        if v == 'wait' then
          waiting[#waiting + 1] = parent
        elseif v ~= 'ok' then
          rec.error = v
          finish(id, rec, 'cancelled', now, now + rec.result_ttl)
          count('cancelled', 1)
          return false
        end
      end
    end
  end
  if #waiting == 0 then
    release(id, rec, now, rec.seq)  -- its own seq: ready in enqueue order, as the others of the batch
    return true
  end
  redis.call('HSET', Q.parents, id, cjson.encode(waiting))
  for _, parent in ipairs(waiting) do
    if queue_of(parent) == QUEUE then
      add_child(parent, id)
    end
  end
  for _, parent in ipairs(elsewhere) do
    post({op = 'link', child = id, parent = parent})
  end
  return true
end

for i = 2, #ARGV, ENQ_N do
  local id = ARGV[i + ENQ.id]
  local key_name = nil
  if ARGV[i + ENQ.has_key] == '1' then
    keyed = keyed + 1
    key_name = KEYS[EXTRA + keyed]
  end
  local holder = key_name and redis.call('GET', key_name)
  local flow = ARGV[i + ENQ.flow] ~= '' and cjson.decode(ARGV[i + ENQ.flow]) or nil
  local held = holder and (batch[holder] or live(load(holder), now))
  if held and flow and flow.d and batch[holder] then
    flush()
  end
  if held and flow and flow.d and debounce(holder, i, flow) then
    redis.call('SET', key_name, holder, 'PX', key_ttl_ms)
    ids[#ids + 1] = holder
  elseif held and not (flow and flow.d) then
    ids[#ids + 1] = holder
  else
    seq = seq + 1
    local priority, delay, after = tonumber(ARGV[i + ENQ.priority]), tonumber(ARGV[i + ENQ.delay]), ARGV[i + ENQ.after]
    if after ~= '' or delay > 0 or flow then
      local rec = {
        priority = priority, result_ttl = tonumber(ARGV[i + ENQ.result_ttl]), attempts = 0, seq = seq,
        enqueued_at = stamp(now), ready_at = stamp(now + delay),
      }
      if flow then
        set_flow(id, rec, flow, now)
      end
      if after ~= '' then
        enter(id, rec, 'waiting', nil)
        wait_for(id, rec, after)
      elseif delay > 0 then
        enter(id, rec, 'scheduled', rec.ready_at)
      else
        make_ready(id, rec, seq)
        readied = readied + 1
      end
      save(id, rec)
    else  -- no record until it is claimed: see lib.lua
      ready_args[#ready_args + 1] = string.format('%.0f', (100 - priority) * TWO_44 + seq)
      ready_args[#ready_args + 1] = id
    end
    payload_args[#payload_args + 1] = id
    payload_args[#payload_args + 1] = ARGV[i + ENQ.payload]
    if key_name then
      redis.call('SET', key_name, id, 'PX', key_ttl_ms)
    end
    batch[id] = true
    ids[#ids + 1] = id
    added = added + 1
  end
end
flush()
count('enqueued', added)
wake(queued + readied)
release_freed(now)  -- a debounced task that was pending gave its seat up
order_ready()
for _, step in ipairs(EFFECTS) do
  ids[#ids + 1] = step
end
return ids
