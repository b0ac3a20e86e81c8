-- enqueue.lua: store a batch of new tasks of one queue.
--
-- KEYS[1..22]  the queue's keys (lib.lua)
-- KEYS[23..]   runq:{q}:key:<key>, one per message that has an idempotency key, in order
-- ARGV[1]      key_ttl in milliseconds
-- ARGV[2..]    7 per message: id, payload, priority, delay (s), result_ttl (s), has_key ("1"/"0"),
--              after (JSON list of parent ids, "" for none)
-- Returns      one id per message: its own, or that of the live task already holding its key;
--              then the outbox steps posted (lib.lua: link steps for parents in other queues)
-- Guarantees   the whole batch or nothing (one script); delay > 0 makes it scheduled at
--              now + delay on the Redis clock, else pending behind the tasks ready before it;
--              a key is held for key_ttl and only while its task exists and has not expired.
--              A task with parents is waiting: parents of this queue are checked here (one
--              that already failed cancels it at once, succeeded ones are not waited on);
--              parents elsewhere are linked by the posted steps.

local key_ttl_ms = ARGV[1]
local now = clock()
local ids, keyed, added, ready = {}, 0, 0, 0
-- A new task waits for its parents; returns false when one of them already ended badly.
local function wait_for(id, rec, after)
  local waiting, elsewhere, seen = {}, {}, {}
  for _, parent in ipairs(cjson.decode(after)) do
    if not seen[parent] then
      seen[parent] = true
      if queue_of(parent) ~= QUEUE then
        waiting[#waiting + 1] = parent
        elsewhere[#elsewhere + 1] = parent
      else
        local v = verdict(load(parent), now)
        if v == 'wait' then
          waiting[#waiting + 1] = parent
        elseif v ~= 'ok' then
          rec.error = dependency_error(parent, v)
          finish(id, rec, 'cancelled', now, now + rec.result_ttl)
          count('cancelled', 1)
          return false
        end
      end
    end
  end
  if #waiting == 0 then
    release(id, rec, now)
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

for i = 2, #ARGV, 7 do
  local id = ARGV[i]
  local key_name = nil
  if ARGV[i + 5] == '1' then
    keyed = keyed + 1
    key_name = KEYS[EXTRA + keyed]
  end
  local holder = key_name and redis.call('GET', key_name)
  if holder and live(load(holder), now) then
    ids[#ids + 1] = holder
  else
    local seq = redis.call('INCR', Q.seq)
    local delay = tonumber(ARGV[i + 3])
    local rec = {
      priority = tonumber(ARGV[i + 2]), result_ttl = tonumber(ARGV[i + 4]), attempts = 0, seq = seq,
      enqueued_at = stamp(now),
    }
    if ARGV[i + 6] ~= '' then
      rec.ready_at = stamp(now + delay)
      enter(id, rec, 'waiting', nil)
      wait_for(id, rec, ARGV[i + 6])
    elseif delay > 0 then
      rec.ready_at = stamp(now + delay)
      enter(id, rec, 'scheduled', rec.ready_at)
    else
      rec.ready_at = rec.enqueued_at
      make_ready(id, rec, seq)
      ready = ready + 1
    end
    save(id, rec)
    redis.call('HSET', Q.payloads, id, ARGV[i + 1])
    if key_name then
      redis.call('SET', key_name, id, 'PX', key_ttl_ms)
    end
    ids[#ids + 1] = id
    added = added + 1
  end
end
count('enqueued', added)
wake(ready)
for _, step in ipairs(EFFECTS) do
  ids[#ids + 1] = step
end
return ids
