-- breaker.lua: one event on the circuit breaker of one task name.
--
-- KEYS[1]      runq:breaker:{<task name>}  hash state (closed|open|half_open), failures
--              (failed attempts in a row), open_until, probe_until
-- ARGV         event (allow|success|failure), failures (threshold), seconds (hold), and for
--              success and failure the token of the claim whose run it reports ("" for none)
-- Returns      seconds to hold the run, as a string ("0": go); success and failure give "0"
-- Guarantees   the same rules as brokers/rules.py breaker_step: the threshold-th failure in a
--              row (or a failed probe) opens it for `seconds`; once they pass, exactly one
--              caller runs as the probe (half_open) until it reports or `seconds` pass again;
--              a success closes it. A report whose token is among the last 32 reported
--              changes nothing: a settle sent again after a lost reply (it is sent in the
--              settle's round trip, whose answer it cannot wait for) counts once.

local event, threshold, seconds, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] or ''
local now = clock()
local seen = ''
if token ~= '' then
  seen = redis.call('HGET', KEYS[1], 'seen') or ''
  if string.find(' ' .. seen .. ' ', ' ' .. token .. ' ', 1, true) then
    return '0'
  end
  local recent = {token}
  for earlier in string.gmatch(seen, '%S+') do
    if #recent >= 32 then
      break
    end
    recent[#recent + 1] = earlier
  end
  seen = table.concat(recent, ' ')
end
local raw = redis.call('HMGET', KEYS[1], 'state', 'failures', 'open_until', 'probe_until')
local state, failures = raw[1] or 'closed', tonumber(raw[2]) or 0
local open_until, probe_until = tonumber(raw[3]) or 0, tonumber(raw[4]) or 0
local hold = 0
if event == 'success' then
  state, failures = 'closed', 0
elseif event == 'failure' then
  failures = failures + 1
  if state == 'half_open' or failures >= threshold then
    state, open_until = 'open', now + seconds
  end
elseif state == 'open' then
  if now < open_until then
    hold = open_until - now
  else
    state, probe_until = 'half_open', now + seconds
  end
elseif state == 'half_open' then
  if now < probe_until then
    hold = math.min(1, probe_until - now)
  else
    probe_until = now + seconds
  end
end
if raw[1] or state ~= 'closed' or failures > 0 then
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'open_until', stamp(open_until),
    'probe_until', stamp(probe_until))
  if token ~= '' then
    redis.call('HSET', KEYS[1], 'seen', seen)
  end
end
return stamp(hold)
