-- progress.lua: store the latest progress of running claims of one queue.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS)
-- ARGV         per item (keys.py PROGRESS_ITEM): id, token, progress (JSON {value, message})
-- Returns      per item: 1 when stored, 0 when the claim no longer holds the task
-- Guarantees   fenced like settle: stored only on a running task whose token matches, so
--              a stale attempt never overwrites a newer one's; stamped `at` with the Redis
--              clock; a followed task publishes the change (lib.lua: changed).

local now = clock()
local stored = {}
for i = 1, #ARGV, PRO_N do
  local id = ARGV[i + PRO.id]
  local raw = redis.call('HGET', Q.tasks, id)
  local rec = raw and decode(raw)
  if rec and rec.status == 'running' and rec.token == ARGV[i + PRO.token] then
    local progress = cjson.decode(ARGV[i + PRO.progress])
    progress.at = stamp(now)
    rec.progress = progress
    if rec.watched then
      changed(id, rec)
    end
    save(id, rec)
    stored[#stored + 1] = 1
  else
    stored[#stored + 1] = 0
  end
end
return stored
