"""The Lua scripts `RedisState` runs in Redis: each is one atomic step and one round trip.

Counters. A calendar counter (day or month) is a hash ``c:<counter>:<period start>`` with fields
r, t, u (requests, tokens, USD) that expires some time after its period ends; Python computes the
period (reset hour, time zone) and passes the key and its expiry. A sliding-minute counter is
three keys: a sorted set of event ids by time, a hash id → "r t u", and a hash of the totals; each
admission first drops the events older than a minute from the totals.

Breakers. A hash ``b:<backend>`` with f (consecutive failures), o (wall time it opened; absent:
closed) and t (wall time a half-open trial began; absent: none, and a trial older than the trial
TTL counts as lost, so that a replica that died mid-trial does not hold the circuit half-open).

Numbers come back as strings: Lua numbers returned to Redis are truncated to integers.
"""

from __future__ import annotations

# ARGV: now, number of asks, then per ask 9 values: kind (d: calendar | m: minute), expire-at (epoch s),
# amounts r t u, limits r t u ('' = none), event id (minute). KEYS: per ask 1 (d) or 3 (m) keys.
# Returns {1, totals r t u per ask…} when admitted, {0, ask index (1-based), field index, limit, used, at}.
ADMIT = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local EPS = 1e-9
local F = {'r', 't', 'u'}
local asks = {}
local k, a = 1, 3
for i = 1, n do
  local q = {kind = ARGV[a], exp = ARGV[a + 1], id = ARGV[a + 8],
             amt = {tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])},
             lim = {tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])}}
  a = a + 9
  local used
  if q.kind == 'd' then
    q.key = KEYS[k]; k = k + 1
    local v = redis.call('HMGET', q.key, 'r', 't', 'u')
    used = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0}
  else
    q.z, q.e, q.key = KEYS[k], KEYS[k + 1], KEYS[k + 2]; k = k + 3
    local old = redis.call('ZRANGEBYSCORE', q.z, '-inf', now - 60)
    for _, id in ipairs(old) do
      local ev = redis.call('HGET', q.e, id)
      if ev then
        local r, t, u = string.match(ev, '(%S+) (%S+) (%S+)')
        redis.call('HINCRBYFLOAT', q.key, 'r', -tonumber(r))
        redis.call('HINCRBYFLOAT', q.key, 't', -tonumber(t))
        redis.call('HINCRBYFLOAT', q.key, 'u', -tonumber(u))
        redis.call('HDEL', q.e, id)
      end
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', q.z, '-inf', now - 60) end
    local v = redis.call('HMGET', q.key, 'r', 't', 'u')
    used = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0}
  end
  for f = 1, 3 do
    local lim = q.lim[f]
    if lim and used[f] >= lim - (f == 3 and EPS or 0) then
      local at = -1
      if q.kind == 'm' then  -- when enough of the minute's events leave the window to be under the limit
        local excess = used[f] - lim
        at = now + 60
        local evs = redis.call('ZRANGE', q.z, 0, -1, 'WITHSCORES')
        for j = 1, #evs, 2 do
          local ev = redis.call('HGET', q.e, evs[j])
          if ev then
            local r, t, u = string.match(ev, '(%S+) (%S+) (%S+)')
            excess = excess - ({tonumber(r), tonumber(t), tonumber(u)})[f]
            at = tonumber(evs[j + 1]) + 60
            if excess < 0 then break end
          end
        end
      end
      return {0, i, f, tostring(lim), tostring(used[f]), tostring(at)}
    end
  end
  q.used = used
  asks[i] = q
end
local out = {1}
for i = 1, n do
  local q = asks[i]
  for f = 1, 3 do
    if q.amt[f] ~= 0 then redis.call('HINCRBYFLOAT', q.key, F[f], q.amt[f]) end
    out[#out + 1] = tostring(q.used[f] + q.amt[f])
  end
  if q.kind == 'd' then
    redis.call('HSETNX', q.key, 'r', 0)
    redis.call('EXPIREAT', q.key, q.exp)
  else
    redis.call('ZADD', q.z, now, q.id)
    redis.call('HSET', q.e, q.id, tostring(q.amt[1]) .. ' ' .. tostring(q.amt[2]) .. ' ' .. tostring(q.amt[3]))
    for _, key in ipairs({q.z, q.e, q.key}) do redis.call('EXPIRE', key, 120) end
  end
end
return out
"""

# ARGV: number of entries, then per entry: kind (d | m), event id, deltas r t u. KEYS: 1 (d) or 3 (m) each.
# A calendar counter that has expired, or a minute event that has left the window, is left alone.
SETTLE = """
local n = tonumber(ARGV[1])
local F = {'r', 't', 'u'}
local k, a = 1, 2
for i = 1, n do
  local kind, id = ARGV[a], ARGV[a + 1]
  local d = {tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])}
  a = a + 5
  if kind == 'd' then
    local key = KEYS[k]; k = k + 1
    if redis.call('EXISTS', key) == 1 then
      for f = 1, 3 do
        if d[f] ~= 0 then redis.call('HINCRBYFLOAT', key, F[f], d[f]) end
      end
    end
  else
    local e, key = KEYS[k + 1], KEYS[k + 2]; k = k + 3
    local ev = redis.call('HGET', e, id)
    if ev then
      local r, t, u = string.match(ev, '(%S+) (%S+) (%S+)')
      local v = {tonumber(r) + d[1], tonumber(t) + d[2], tonumber(u) + d[3]}
      redis.call('HSET', e, id, tostring(v[1]) .. ' ' .. tostring(v[2]) .. ' ' .. tostring(v[3]))
      for f = 1, 3 do
        if d[f] ~= 0 then redis.call('HINCRBYFLOAT', key, F[f], d[f]) end
      end
    end
  end
end
return 1
"""

# Every breaker script returns the record after it: {f, o, t, extra} as strings ('' = absent).
_RECORD = "local function rec(x) local v = redis.call('HMGET', KEYS[1], 'f', 'o', 't') " \
          "return {v[1] or '0', v[2] or '', v[3] or '', tostring(x)} end\n"

# ARGV: now, cooldown, trial TTL. extra: 1 may send (closed, or claimed the trial), 0 may not.
BREAKER_BEGIN = _RECORD + """
local now, cooldown, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local o = tonumber(redis.call('HGET', KEYS[1], 'o'))
if not o then return rec(1) end
if now - o < cooldown then return rec(0) end
local t = tonumber(redis.call('HGET', KEYS[1], 't'))
if t and now - t < ttl then return rec(0) end
redis.call('HSET', KEYS[1], 't', tostring(now))
redis.call('EXPIRE', KEYS[1], 86400)
return rec(1)
"""

# ARGV: now, threshold, whether this replica holds the trial. extra: 1 when it opened now.
BREAKER_FAILURE = _RECORD + """
local now, threshold, mine = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
local trial = mine and redis.call('HEXISTS', KEYS[1], 't') == 1
if mine then redis.call('HDEL', KEYS[1], 't') end
local was_open = redis.call('HEXISTS', KEYS[1], 'o') == 1
local opened = trial or (not was_open and f >= threshold)
if opened then redis.call('HSET', KEYS[1], 'o', tostring(now)) end
redis.call('EXPIRE', KEYS[1], 86400)
return rec(opened and 1 or 0)
"""

# Close and reset; the record as it was before.
BREAKER_SUCCESS = _RECORD + """
local before = rec(0)
redis.call('DEL', KEYS[1])
return before
"""

# ARGV: now, cooldown: an open breaker's cool-down ends now.
BREAKER_EXPIRE = _RECORD + """
local o = tonumber(redis.call('HGET', KEYS[1], 'o'))
local edge = tonumber(ARGV[1]) - tonumber(ARGV[2])
if o and o > edge then redis.call('HSET', KEYS[1], 'o', tostring(edge)) end
return rec(0)
"""

# After an outage: what a replica counted on its own goes back into a calendar counter. KEYS[1]: the
# counter; ARGV: its totals as this replica last knew them plus its own (r t u), its own alone (r t u),
# expire-at. A counter Redis no longer has (restarted without persistence) takes the totals; one it
# has (another replica came back first, or Redis kept it) takes only this replica's own counts.
MERGE = """
local F = {'r', 't', 'u'}
local fresh = redis.call('EXISTS', KEYS[1]) == 0
for f = 1, 3 do
  local v = tonumber(ARGV[fresh and f or f + 3])
  if v ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], F[f], v) end
end
redis.call('HSETNX', KEYS[1], 'r', 0)
redis.call('EXPIREAT', KEYS[1], ARGV[7])
return 1
"""
