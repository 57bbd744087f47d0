"""The Lua scripts of the Redis broker and data store; docs/protocol.md explains them.

Broker scripts take ``KEYS[1] = {ns}:queues`` (so a cluster client routes
them to the namespace's slot) and ``ARGV[1] = {ns}:``, the key prefix from
which they build the other keys of the namespace, all in the same hash slot.
Times come from the server's ``TIME`` so that consumers on machines whose
clocks disagree still agree on leases; scores are epoch milliseconds.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

from redis.exceptions import NoScriptError

from .resp import RespClient, checked

BATCH = 1000
"""Most messages one script call moves or handles (Lua's ``unpack`` limit is 8000)."""


def ms(seconds: float) -> int:
    """Whole milliseconds, at least 1, as Redis's PX and the scripts want."""
    return max(1, math.ceil(seconds * 1000))


class Script:
    """One Lua script, run by EVALSHA and loaded again when the server lost it (a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of one call, to send with others."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(self, client: RespClient, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return (await self.many(client, keys, [args]))[0]

    async def many(self, client: RespClient, keys: Sequence[Any], calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run the script once per argument list, all in one round trip."""
        results = await client.exchange([self.command(keys, args) for args in calls])
        await self.rerun_missing(client, keys, calls, results)
        return checked(results)

    async def rerun_missing(
        self, client: RespClient, keys: Sequence[Any], calls: Sequence[Sequence[Any]], results: list[Any]
    ) -> None:
        """Load the script and run again the calls whose result says the server lost it."""
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            load = ("SCRIPT", "LOAD", self.source)
            loaded, *again = await client.exchange([load, *(self.command(keys, calls[i]) for i in missing)])
            if isinstance(loaded, Exception):
                raise loaded
            for i, result in zip(missing, again):
                results[i] = result


CLOCK = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_BROKER = CLOCK + """
local P = ARGV[1]
local QUEUES = KEYS[1]

-- The key of structure `kind` of a queue: ready, wake, delayed, leased, body,
-- tokens, requeued, dead, dead_body, dead_reason.  A call handles at most 1000 messages,
-- so every unpack() below stays within Lua's limit.
local function key(kind, queue) return P .. kind .. ':' .. queue end

local function wake(queue)
  local w = key('wake', queue)
  if redis.call('LLEN', w) == 0 then redis.call('RPUSH', w, '1') end
end

-- Delete the fields of messages `ids` in the queue's hashes of live (or dead) messages.
local function remove(queue, ids, kinds)
  if #ids == 0 then return end
  for _, kind in ipairs(kinds or {'body', 'tokens', 'requeued'}) do
    redis.call('HDEL', key(kind, queue), unpack(ids))
  end
end
local DEAD = {'dead_body', 'dead_reason'}

-- Drop a queue from the registry once it holds no message.
local function forget(queue)
  if redis.call('EXISTS', key('ready', queue), key('delayed', queue),
                key('leased', queue), key('dead', queue)) == 0 then
    redis.call('SREM', QUEUES, queue)
    redis.call('DEL', key('wake', queue))
  end
end

-- Move the members of zset `kind` (delayed or leased) scored up to `now` to the ready list.
local function ripen(queue, kind, now)
  local z = key(kind, queue)
  local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
  if #ids == 0 then return 0 end
  redis.call('ZREM', z, unpack(ids))
  redis.call('RPUSH', key('ready', queue), unpack(ids))
  return #ids
end

local function first_score(k)
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end

-- Add 1 to the counters of `ids` in hash `k`; their new values.
local function bump(k, ids)
  local values = redis.call('HMGET', k, unpack(ids))
  local args = {}
  for j, id in ipairs(ids) do
    values[j] = (tonumber(values[j]) or 0) + 1
    args[#args + 1] = id
    args[#args + 1] = values[j]
  end
  redis.call('HSET', k, unpack(args))
  return values
end

-- ARGV from `first` on as (id, token) pairs: the ids and the tokens.
local function leases(first)
  local ids, tokens = {}, {}
  for i = first, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
    tokens[#tokens + 1] = ARGV[i + 1]
  end
  return ids, tokens
end

-- End the leases of `ids` still held under `tokens`; the ids that were.
local function take_leases(queue, ids, tokens)
  local current = redis.call('HMGET', key('tokens', queue), unpack(ids))
  local leased = redis.call('ZMSCORE', key('leased', queue), unpack(ids))
  local ours = {}
  for j, id in ipairs(ids) do
    if leased[j] and current[j] == tokens[j] then ours[#ours + 1] = id end
  end
  if #ours > 0 then redis.call('ZREM', key('leased', queue), unpack(ours)) end
  return ours
end

local function delay(queue, id, at)
  local z = key('delayed', queue)
  redis.call('ZADD', z, at, id)
  if redis.call('ZRANGE', z, 0, 0)[1] == id then wake(queue) end
end
"""

ENQUEUE = Script(_BROKER + """
-- ARGV[2..]: id, queue, eta (epoch ms or ''), body; an id already in its queue is skipped.
local now = now_ms()
local groups = {}
for i = 2, #ARGV, 4 do
  local g = groups[ARGV[i + 1]]
  if not g then g = {ids = {}, etas = {}, bodies = {}}; groups[ARGV[i + 1]] = g end
  g.ids[#g.ids + 1] = ARGV[i]
  g.etas[#g.etas + 1] = ARGV[i + 2]
  g.bodies[#g.bodies + 1] = ARGV[i + 3]
end
local added = 0
for queue, g in pairs(groups) do
  local bodies = key('body', queue)
  local existing = redis.call('HMGET', bodies, unpack(g.ids))
  local new, fields, ready, delayed = {}, {}, {}, {}
  for j, id in ipairs(g.ids) do
    if not existing[j] and not new[id] then
      new[id] = true
      fields[#fields + 1] = id
      fields[#fields + 1] = g.bodies[j]
      local eta = g.etas[j]
      if eta ~= '' and tonumber(eta) > now then
        delayed[#delayed + 1] = eta
        delayed[#delayed + 1] = id
      else
        ready[#ready + 1] = id
      end
    end
  end
  if #fields > 0 then
    redis.call('HSET', bodies, unpack(fields))
    added = added + #fields / 2
    if #ready > 0 then
      redis.call('RPUSH', key('ready', queue), unpack(ready))
      wake(queue)
    end
    if #delayed > 0 then
      local z = key('delayed', queue)
      redis.call('ZADD', z, unpack(delayed))
      if new[redis.call('ZRANGE', z, 0, 0)[1]] then wake(queue) end
    end
    redis.call('SADD', QUEUES, queue)
  end
end
return added
""")

FETCH = Script(_BROKER + """
-- ARGV[2] count (at most 1000), ARGV[3] lease ms, ARGV[4..] queues, first first.
-- A message whose id is revoked ({ns}:revoked:<id> exists) is removed, as ACK would, not taken.
-- Returns {ms to the next due delayed message or lease expiry (-1: none),
--          then id, queue, body, deliveries, token per message taken}.
local now = now_ms()
local want = math.min(tonumber(ARGV[2]), 1000)
local expiry = now + tonumber(ARGV[3])
local out = {-1}
local next_due = nil
for i = 4, #ARGV do
  local queue = ARGV[i]
  local q = key('ready', queue)
  ripen(queue, 'delayed', now)
  ripen(queue, 'leased', now)
  local ids = want > 0 and redis.call('LPOP', q, want)
  if ids then
    local found = redis.call('HMGET', key('body', queue), unpack(ids))
    local marks = {}
    for j, id in ipairs(ids) do marks[j] = P .. 'revoked:' .. id end
    local revoked = redis.call('MGET', unpack(marks))
    local live, bodies, leases, dropped = {}, {}, {}, {}
    for j, id in ipairs(ids) do
      if found[j] and revoked[j] then
        dropped[#dropped + 1] = id
      elseif found[j] then
        live[#live + 1] = id
        bodies[#bodies + 1] = found[j]
        leases[#leases + 1] = expiry
        leases[#leases + 1] = id
      end
    end
    if #live > 0 then
      redis.call('ZADD', key('leased', queue), unpack(leases))
      local tokens = bump(key('tokens', queue), live)
      local since = redis.call('HMGET', key('requeued', queue), unpack(live))
      for j, id in ipairs(live) do
        out[#out + 1] = id
        out[#out + 1] = queue
        out[#out + 1] = bodies[j]
        out[#out + 1] = tokens[j] - (tonumber(since[j]) or 0)
        out[#out + 1] = tokens[j]
      end
      want = want - #live
    end
    if #dropped > 0 then
      remove(queue, dropped)
      forget(queue)
    end
  end
  if redis.call('LLEN', q) > 0 then wake(queue) else redis.call('DEL', key('wake', queue)) end
  for _, kind in ipairs({'delayed', 'leased'}) do
    local score = first_score(key(kind, queue))
    if score and (not next_due or score < next_due) then next_due = score end
  end
end
if next_due then out[1] = math.max(0, math.ceil(next_due - now)) end
return out
""")

RENEW = Script(_BROKER + """
-- ARGV[2] queue, ARGV[3] lease ms, ARGV[4..] id, token pairs: extend the leases still ours.
local queue = ARGV[2]
local expiry = now_ms() + tonumber(ARGV[3])
local ids, tokens = leases(4)
local current = redis.call('HMGET', key('tokens', queue), unpack(ids))
local args = {}
for j, id in ipairs(ids) do
  if current[j] == tokens[j] then
    args[#args + 1] = expiry
    args[#args + 1] = id
  end
end
if #args > 0 then redis.call('ZADD', key('leased', queue), 'XX', unpack(args)) end
return 0
""")

ACK = Script(_BROKER + """
-- ARGV[2] queue, ARGV[3..] id, token pairs: remove for good the messages whose lease is still ours.
local queue = ARGV[2]
local ours = take_leases(queue, leases(3))
if #ours > 0 then
  remove(queue, ours)
  forget(queue)
end
return 0
""")

REQUEUE = Script(_BROKER + """
-- ARGV[2] queue, ARGV[3] id, ARGV[4] token, ARGV[5] delay ms, ARGV[6] new body or absent.
local queue, id = ARGV[2], ARGV[3]
if #take_leases(queue, {id}, {ARGV[4]}) == 0 then return 0 end
if ARGV[6] then redis.call('HSET', key('body', queue), id, ARGV[6]) end
redis.call('HSET', key('requeued', queue), id, ARGV[4])
local ms = tonumber(ARGV[5])
if ms > 0 then
  delay(queue, id, now_ms() + ms)
else
  redis.call('RPUSH', key('ready', queue), id)
  wake(queue)
end
return 1
""")

DEAD_LETTER = Script(_BROKER + """
-- ARGV[2] queue, ARGV[3] id, ARGV[4] token, ARGV[5] reason, ARGV[6] new body or absent.
local queue, id = ARGV[2], ARGV[3]
if #take_leases(queue, {id}, {ARGV[4]}) == 0 then return 0 end
local body = ARGV[6] or redis.call('HGET', key('body', queue), id) or ''
remove(queue, {id})
redis.call('HSET', key('dead_body', queue), id, body)
redis.call('HSET', key('dead_reason', queue), id, ARGV[5])
redis.call('ZADD', key('dead', queue), now_ms(), id)
redis.call('SADD', QUEUES, queue)
return 1
""")

DEAD_LETTERS = Script(_BROKER + """
-- ARGV[2] limit, ARGV[3] queue or '' for all: {id, queue, body, reason, dead at (ms)} oldest first.
local limit = tonumber(ARGV[2])
local queues = {ARGV[3]}
if ARGV[3] == '' then queues = redis.call('SMEMBERS', QUEUES) end
local found = {}
for _, queue in ipairs(queues) do
  local entries = redis.call('ZRANGE', key('dead', queue), 0, limit - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    found[#found + 1] = {tonumber(entries[i + 1]), entries[i], queue, entries[i + 1]}
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {}
for i = 1, math.min(limit, #found) do
  local id, queue = found[i][2], found[i][3]
  out[#out + 1] = id
  out[#out + 1] = queue
  out[#out + 1] = redis.call('HGET', key('dead_body', queue), id) or ''
  out[#out + 1] = redis.call('HGET', key('dead_reason', queue), id) or ''
  out[#out + 1] = found[i][4]
end
return out
""")

_DEAD_SELECT = """
-- ARGV[2] '1': act on the dead letters with ids ARGV[3..] (in any queue);
-- ARGV[2] '0': act on up to 1000 dead letters of any queue.
local function each_dead(act)
  local n = 0
  local queues = redis.call('SMEMBERS', QUEUES)
  if ARGV[2] == '1' then
    for i = 3, #ARGV do
      for _, queue in ipairs(queues) do
        if redis.call('ZREM', key('dead', queue), ARGV[i]) == 1 then
          act(queue, ARGV[i])
          n = n + 1
        end
      end
    end
    return n
  end
  for _, queue in ipairs(queues) do
    local d = key('dead', queue)
    local ids = redis.call('ZRANGE', d, 0, 999 - n)
    if #ids > 0 then
      redis.call('ZREM', d, unpack(ids))
      for _, id in ipairs(ids) do act(queue, id) end
      n = n + #ids
    end
    if n >= 1000 then break end
  end
  return n
end
"""

RETRY_DEAD = Script(_BROKER + _DEAD_SELECT + """
-- A dead letter whose id is queued again meanwhile (see ENQUEUE) is just dropped.
return each_dead(function(queue, id)
  local body = redis.call('HGET', key('dead_body', queue), id) or ''
  if redis.call('HSETNX', key('body', queue), id, body) == 1 then
    redis.call('RPUSH', key('ready', queue), id)
    wake(queue)
  end
  remove(queue, {id}, DEAD)
end)
""")

PURGE_DEAD = Script(_BROKER + _DEAD_SELECT + """
local seen = {}
local n = each_dead(function(queue, id)
  remove(queue, {id}, DEAD)
  seen[queue] = true
end)
for queue in pairs(seen) do forget(queue) end
return n
""")

PURGE = Script(_BROKER + """
-- ARGV[2] queue: delete its ready and delayed messages, up to 1000 per call.
local queue = ARGV[2]
local q, z = key('ready', queue), key('delayed', queue)
local ids = redis.call('LRANGE', q, 0, 999)
if #ids > 0 then redis.call('LTRIM', q, #ids, -1) end
if #ids < 1000 then
  local delayed = redis.call('ZRANGE', z, 0, 999 - #ids)
  if #delayed > 0 then redis.call('ZREM', z, unpack(delayed)) end
  for _, id in ipairs(delayed) do ids[#ids + 1] = id end
end
remove(queue, ids)
forget(queue)
return #ids
""")

RECOVER = Script(_BROKER + """
-- Return the expired leases of every known queue to their ready lists.
local now, n = now_ms(), 0
for _, queue in ipairs(redis.call('SMEMBERS', QUEUES)) do
  local moved = ripen(queue, 'leased', now)
  if moved > 0 then wake(queue) end
  n = n + moved
end
return n
""")
