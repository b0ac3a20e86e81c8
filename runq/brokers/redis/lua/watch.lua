-- watch.lua: read a task and, when asked, wait on it.
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS), then:
-- KEYS[EXTRA+1] runq:{q}:done:<id> (only used with register "1")
-- ARGV         id, register ("1": the caller blocks on the done list next)
-- Returns      {record JSON, payload}, or nil when the task is unknown or expired
-- Guarantees   atomic with every state change. With register "1": a task that is not
--              final counts this client in waiters, and the state change that makes it
--              final pushes a token with that state to the done list; a task that is
--              final (or unknown) gets its token pushed here and now. Either way the
--              caller's BLPOP, sent in the same pipeline, returns without a second read.

local id, register = ARGV[1], ARGV[2] == '1'
local rec = load(id)
if not live(rec, clock()) then
  if register then
    redis.call('RPUSH', KEYS[EXTRA + 1], 'gone')
    redis.call('PEXPIRE', KEYS[EXTRA + 1], 10000)
  end
  return nil
end
if register then
  if FINAL[rec.status] then
    redis.call('RPUSH', KEYS[EXTRA + 1], done_token(id, rec))
    redis.call('PEXPIRE', KEYS[EXTRA + 1], 10000)
  else
    redis.call('HINCRBY', Q.waiters, id, 1)
  end
end
return {cjson.encode(rec), redis.call('HGET', Q.payloads, id) or ''}
