-- enqueue.lua: store a batch of new tasks of one queue.
--
-- KEYS[1..19]  the queue's keys (lib.lua)
-- KEYS[20..]   runq:{q}:key:<key>, one per message that has an idempotency key, in order
-- ARGV[1]      key_ttl in milliseconds
-- ARGV[2..]    6 per message: id, payload, priority, delay (s), result_ttl (s), has_key ("1"/"0")
-- Returns      one id per message: its own, or that of the live task already holding its key
-- Guarantees   the whole batch or nothing (one script); delay > 0 makes it scheduled at
--              now + delay on the Redis clock, else pending behind the tasks ready before it;
--              a key is held for key_ttl and only while its task exists and has not expired.

local key_ttl_ms = ARGV[1]
local now = clock()
local ids, keyed, added, ready = {}, 0, 0, 0
for i = 2, #ARGV, 6 do
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
    if delay > 0 then
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
return ids
