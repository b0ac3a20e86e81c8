-- list.lua: the newest tasks of one queue in the given states (App.list, `runq list`).
--
-- KEYS         the queue's keys named for it in keys.py (FUNCTIONS)
-- ARGV         limit, then the statuses to list
-- Returns      up to `limit` {id, record JSON, payload}, newest first: by seq, the order they
--              were enqueued in this queue; a task past its result_ttl is left out
-- Guarantees   exact, whatever order each state's own zset keeps: waiting, scheduled and the
--              final states are indexed by seq (status:<s>); running tasks are few (all are
--              read); pending ones are ordered by priority, then by the seq they got when they
--              became ready, never below their enqueue seq, so each priority's band is read
--              from its highest ready seq down only until no task below can be newer.
--              Scheduled tasks an older runq left unindexed are indexed first.

local limit = tonumber(ARGV[1])
local now = clock()
local found, floor = {}, nil  -- candidates {seq, id, rec}; floor: the lowest seq of the newest `limit`

local function compact()
  table.sort(found, function(a, b) return a[1] > b[1] end)
  for i = #found, limit + 1, -1 do
    found[i] = nil
  end
  if #found == limit then
    floor = found[limit][1]
  end
end

local function keep(seq, id, rec)
  if floor == nil or seq > floor then
    found[#found + 1] = {seq, id, rec}
    if #found >= 2 * limit then
      compact()
    end
  end
end

-- Whether no task of enqueue seq <= `seq` can be among the newest `limit` any more.
local function full_below(seq)
  return floor ~= nil and seq <= floor
end

-- A zset by seq (status:<s>), newest first, skipping tasks past their result_ttl.
local function by_seq(zset)
  local offset = 0
  while true do
    local hits = redis.call('ZREVRANGE', zset, offset, offset + limit - 1, 'WITHSCORES')
    if #hits == 0 then
      return
    end
    for i = 1, #hits, 2 do
      if full_below(tonumber(hits[i + 1])) then
        return
      end
      local rec = load(hits[i])
      if live(rec, now) then
        keep(rec.seq, hits[i], rec)
      end
    end
    offset = offset + limit
  end
end

-- Pending: band by band (one per priority), each from its highest ready seq down.
local function pending()
  local low = '-inf'
  while true do
    local first = redis.call('ZRANGEBYSCORE', Q.pending, low, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #first == 0 then
      return
    end
    local band = math.floor(tonumber(first[2]) / TWO_44) * TWO_44
    local top = string.format('(%.0f', band + TWO_44)
    local offset, done = 0, false
    while not done do
      local bottom = string.format('%.0f', band)
      local chunk = redis.call('ZRANGE', Q.pending, top, bottom, 'BYSCORE', 'REV', 'LIMIT', offset, limit, 'WITHSCORES')
      for i = 1, #chunk, 2 do
        if full_below(tonumber(chunk[i + 1]) - band) then  -- its enqueue seq is at most its ready seq
          done = true
          break
        end
        local rec = load(chunk[i])
        keep(rec.seq, chunk[i], rec)
      end
      done = done or #chunk < 2 * limit
      offset = offset + limit
    end
    low = string.format('%.0f', band + TWO_44)
  end
end

if redis.call('ZCARD', Q.scheduled) ~= redis.call('ZCARD', Q.scheduled_seq) then
  for _, id in ipairs(redis.call('ZRANGE', Q.scheduled, 0, -1)) do
    redis.call('ZADD', Q.scheduled_seq, 'NX', load(id).seq, id)
  end
end
for i = 2, #ARGV do
  local status = ARGV[i]
  if status == 'pending' then
    pending()
  elseif status == 'running' then
    for _, id in ipairs(redis.call('ZRANGE', Q.running, 0, -1)) do
      local rec = load(id)
      keep(rec.seq, id, rec)
    end
  else
    by_seq(INDEX[status])
  end
end
compact()
local listed = {}
for i, entry in ipairs(found) do
  listed[i] = {entry[2], cjson.encode(entry[3]), redis.call('HGET', Q.payloads, entry[2]) or ''}
end
return listed
