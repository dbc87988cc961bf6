"""The Lua scripts of the Redis store: each one command, atomic on the server, and able to share
a pipeline with plain commands. Keys and fields as `proxy/store/redis.py` lays them out."""

from __future__ import annotations

from proxy.core.fingerprints import ANSWERS_KEPT, BACKS_KEPT, FINGERPRINTS_KEPT, ROTATIONS_KEPT

# A key of the proxy's holding another type than the proxy writes there is none of its state
# (a buggy client's, or a version's that laid keys out otherwise): written over, as a forged
# record is. Left, it would refuse every write naming it, and every answer names the models index.
_CLAIM_FUNCTION = """
local function claim(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= kind and found ~= 'none' then redis.call('DEL', key) end
end
"""

# The observation of one answer's fingerprint: `key` is the model's hash, `rotations` its
# history list. Returns {previous current or nil, 1 if the fingerprint is new for the model else 0,
# 1 if this call moved the current fingerprint else 0}: the rule of core.fingerprints.observed.
# A move is pushed onto the history (bounded), a move back also onto the hash's `backs`.
# Announced only when `current` moves: what a near-cache serves by (the current fingerprint, and
# the last_seen of the others for the grace window) changes only then.
# Timestamps are written with %.17g so that they round-trip exactly through JSON.
_OBSERVE_FUNCTION = (
    _CLAIM_FUNCTION
    + """
local function dated(stamp)  -- a time a date can name, as layout.parse_model reads them
  return type(stamp) == 'number' and stamp >= 0 and stamp < 253402300800
end

-- Past FINGERPRINTS_KEPT records, the one seen last longest ago goes (never `keep1`, `keep2`):
-- as MemoryStore does, with core.fingerprints.least_recent. A record no script wrote goes first.
local function forget_oldest(key, keep1, keep2)
  local fields = redis.call('HGETALL', key)
  local records, oldest, oldest_seen = 0, nil, nil
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 3) == 'fp:' then
      records = records + 1
      local fingerprint = string.sub(name, 4)
      if fingerprint ~= keep1 and fingerprint ~= keep2 then
        local ok, rec = pcall(cjson.decode, fields[i + 1])
        local seen = -1
        if ok and type(rec) == 'table' and dated(rec.last_seen) then seen = rec.last_seen end
        if oldest == nil or seen < oldest_seen then oldest, oldest_seen = name, seen end
      end
    end
  end
  if records > FINGERPRINTS_KEPT and oldest then redis.call('HDEL', key, oldest) end
end

local function observe(key, rotations, model, fingerprint, now, count, channel, moves)
  claim(key, 'hash')
  claim(rotations, 'list')
  local field = 'fp:' .. fingerprint
  local previous = redis.call('HGET', key, 'current')
  local raw = redis.call('HGET', key, field)
  local rec
  if raw then
    local ok, found = pcall(cjson.decode, raw)
    if ok and type(found) == 'table' and type(found.count) == 'number' and found.count >= 0
        and type(found.order) == 'number' and dated(found.first_seen)
        and dated(found.last_seen) then
      rec = found
    else
      raw = false  -- a record no script wrote: written over, as a new one
    end
  end
  if raw then
    rec.count = rec.count + count
    rec.last_seen = math.max(rec.last_seen, now)
  else
    rec = {first_seen = now, last_seen = now, count = count,
           order = redis.call('HINCRBY', key, 'seen', 1)}
  end
  local json = string.format('{"first_seen":%.17g,"last_seen":%.17g,"count":%d,"order":%d}',
    rec.first_seen, rec.last_seen, rec.count, rec.order)
  local new, changed, current = 1, 0, fingerprint
  if raw then new = 0 end
  if previous and previous ~= fingerprint then
    if moves == 0 and raw then current = previous else changed = 1 end
  end
  redis.call('HSET', key, 'model', model, 'current', current, field, json)
  if new == 1 then forget_oldest(key, current, fingerprint) end
  if changed == 1 then
    local back = 1 - new
    local move = string.format('{"old":%s,"new":%s,"at":%.17g,"back":%d}',
      cjson.encode(previous), cjson.encode(fingerprint), now, back)
    redis.call('LPUSH', rotations, move)
    redis.call('LTRIM', rotations, 0, ROTATIONS_KEPT - 1)
    if back == 1 then
      local backs = {}
      for stamp in string.gmatch(redis.call('HGET', key, 'backs') or '', '%S+') do
        table.insert(backs, stamp)
      end
      table.insert(backs, string.format('%.17g', now))
      while #backs > BACKS_KEPT do table.remove(backs, 1) end
      redis.call('HSET', key, 'backs', table.concat(backs, ' '))
    end
  end
  if channel ~= '' and previous ~= current then
    redis.call('PUBLISH', channel, 'm' .. string.char(0) .. model)
  end
  return {previous, new, changed}
end
""".replace("ROTATIONS_KEPT", str(ROTATIONS_KEPT))
    .replace("BACKS_KEPT", str(BACKS_KEPT))
    .replace("FINGERPRINTS_KEPT", str(FINGERPRINTS_KEPT))
)

# Past ANSWERS_KEPT answers (one per fingerprint), a key forgets others than the one just
# written: any, as Redis lists a hash's fields in no order of writing.
_TRIM_FUNCTION = """
local function trim(entry, kept)
  local over = redis.call('HLEN', entry) - ANSWERS_KEPT - 1  -- and the labels field
  if over <= 0 then return end
  for _, field in ipairs(redis.call('HKEYS', entry)) do
    if over <= 0 then break end
    if field ~= kept and string.byte(field, 1) ~= 0 then  -- not the labels (layout.LABELS)
      redis.call('HDEL', entry, field)
      over = over - 1
    end
  end
end
""".replace("ANSWERS_KEPT", str(ANSWERS_KEPT))

# KEYS[1] = an entry hash; ARGV[1] = the fingerprint just written there, which stays.
TRIM_ANSWERS = _TRIM_FUNCTION + "trim(KEYS[1], ARGV[1])\nreturn 1"

# One answer's write: an entry hash and its fill lock (same hash tag: same slot on a cluster);
# the lock is released when `token` is given (see RedisStore.put). A script rather than
# MULTI/EXEC, so that it is one command and can share a pipeline.
_PUT_FUNCTION = (
    _TRIM_FUNCTION
    + """
local function put(entry, lock, fingerprint, value, field, labels, ttl, channel, message, token)
  redis.call('HSET', entry, fingerprint, value, field, labels)
  trim(entry, fingerprint)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', entry, ttl)
  else redis.call('PERSIST', entry) end
  if channel ~= '' then redis.call('PUBLISH', channel, message) end
  if token ~= '' then redis.call('DEL', lock) end
end
"""
)

# KEYS = the model's hash, its history; ARGV = model, fingerprint, now, count, channel, moves.
OBSERVE = _OBSERVE_FUNCTION + (
    "return observe(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),"
    " ARGV[5], tonumber(ARGV[6]))"
)

# KEYS[1] = a models index; ARGV[1] = a model. Names it there, as RECORD does.
INDEX = _CLAIM_FUNCTION + "claim(KEYS[1], 'set')\nreturn redis.call('SADD', KEYS[1], ARGV[1])"

# KEYS = an entry hash, its lock; ARGV = fingerprint, value, labels field, labels, ttl, channel,
# message, lock token or ''.
PUT = _PUT_FUNCTION + "put(KEYS[1], KEYS[2], unpack(ARGV, 1, 8))\nreturn 1"

# Both in one script, the observation first, for a standalone server (on a cluster the keys sit
# on several slots). KEYS = the model's hash, its history, the models index, then PUT's;
# ARGV = model, now, then PUT's.
RECORD = (
    _OBSERVE_FUNCTION
    + _PUT_FUNCTION
    + """
local seen = observe(KEYS[1], KEYS[2], ARGV[1], ARGV[3], tonumber(ARGV[2]), 1, ARGV[8], 1)
claim(KEYS[3], 'set')
redis.call('SADD', KEYS[3], ARGV[1])  -- each time: the index may have been evicted
put(KEYS[4], KEYS[5], unpack(ARGV, 3, 10))
return seen
"""
)

# KEYS[1] = a fill lock; ARGV = a token, the lock's time to live (ms). Takes the lock if no one
# holds it (1); else (0) bounds the holder's by the same time to live: every proxy's lock has one
# (its --lock-timeout), so a lock without (or a longer one, or a value of another type) is no
# leader's, and would make every miss of its key wait a whole lock timeout while it stayed.
LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local left = redis.call('PTTL', KEYS[1])
if left == -1 or left > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] = a fill lock; ARGV[1] = the holder's token. Deletes only the caller's own lock.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] = a sorted set of attempt times; ARGV = now, window (seconds), keep, add (1 or 0),
# a member unique to this attempt. Drops the times out of the window, adds `now` if asked
# (keeping the newest `keep`, the set expiring with the window), and returns the newest `keep`
# times left, oldest first, as %.17g strings so that they round-trip exactly.
ATTEMPTS = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now - window))
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], string.format('%.17g', now), ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
end
local scored = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[3]), -1, 'WITHSCORES')
local times = {}
for i = 2, #scored, 2 do times[#times + 1] = string.format('%.17g', tonumber(scored[i])) end
return times
"""

# KEYS[1] = an entry hash; ARGV[1] = its labels field. Returns {answers, bytes as Redis accounts
# them, what the answers grow by uncompressed}: an entry of the codec's format (first byte 2)
# says its uncompressed size in bytes 3-6; any other value counts as itself; a key of another
# type is none of the proxy's, and counts for nothing.
USAGE = """
local answers, expansion = 0, 0
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {0, 0, 0} end  -- not an entry
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    answers = answers + 1
    local value = all[i + 1]
    if #value >= 6 and string.byte(value, 1) == 2 then
      expansion = expansion + struct.unpack('>I4', value, 3) - #value
    end
  end
end
return {answers, redis.call('MEMORY', 'USAGE', KEYS[1]) or 0, expansion}
"""

# KEYS[1] = a model index (a set); ARGV = its bound, most names to draw. Draws at random what
# is over the bound, at most that many, and returns them: counted and drawn in one step, so
# replicas trimming at once never draw more than is over it between them.
TRIM = """
local over = redis.call('SCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return {} end
return redis.call('SPOP', KEYS[1], math.min(over, tonumber(ARGV[2])))
"""
