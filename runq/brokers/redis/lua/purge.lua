-- purge.lua: delete up to `limit` tasks of one queue in the given states.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         limit, then the statuses to purge (never "running": the caller refuses it)
-- Returns      {tasks deleted, of which not past their result_ttl}; the caller repeats while
--              the first equals limit and counts the second (one past its TTL was gone already)
-- Guarantees   each deleted task is gone from every index; bounded work per call so a
--              large dead-letter set never blocks Redis for long.

local limit = tonumber(ARGV[1])
local now = clock()
local removed, live_ones = 0, 0
for i = 2, #ARGV do
  if removed >= limit then
    break
  end
  local zset = INDEX[ARGV[i]] or PLACE[ARGV[i]]
  if ARGV[i] == 'scheduled' then
    zset = PLACE.scheduled  -- by eta: it holds every one (tasks scheduled before status:scheduled too)
  end
  for _, id in ipairs(redis.call('ZRANGE', zset, 0, limit - removed - 1)) do
    local rec = load(id)
    if live(rec, now) then
      live_ones = live_ones + 1
    end
    forget(id, rec)
    redis.call('ZREM', zset, id)
    removed = removed + 1
  end
end
return {removed, live_ones}
