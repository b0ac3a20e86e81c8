-- renew.lua: extend the leases of running claims of one queue.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- ARGV         lease (s), then per claim (keys.py RENEW_ITEM): id, token
-- Returns      1 per pair when the claim is still held, else 0
-- Guarantees   only a running task whose fencing token matches is extended: a cancelled
--              task or one reclaimed by another worker answers 0 and is left alone. A held
--              lease is written (now + lease) only once less than half of it is left, as on
--              every broker (runq/brokers/rules.py: renews): a longer one is never shortened.

local now = clock()
local lease = tonumber(ARGV[1])
local until_ = stamp(now + lease)
local held = {}
for i = 2, #ARGV, REN_N do
  local id = ARGV[i + REN.id]
  local rec = load(id)
  if rec and rec.status == 'running' and rec.token == ARGV[i + REN.token] then
    if tonumber(rec.lease_until) - now < lease / 2 then
      rec.lease_until = until_
      redis.call('ZADD', Q.running, until_, id)
      save(id, rec)
    end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
