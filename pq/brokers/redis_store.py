"""The data store half of RedisStore: events, task records, revocations, slots, locks, counters.

Records and revocations are strings with a TTL, a lock is a string holding
its holder's name, a slot counter is a zset of holder -> lease expiry that
expires with its last lease, counters are fields of one hash.  Keys are
listed in docs/protocol.md.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Sequence

from redis.asyncio import Redis

from .base import DataStore, Envelope, EventHandler, EventItem, Subscription
from .redis_events import EventHub, batch_frame, frame
from .redis_scripts import CLOCK, Script, ms
from .resp import RespClient, checked


class RedisDataStore(DataStore):
    """Data store methods; RedisStore gives them its client, key prefix and error handling."""

    redis: Redis  # for pub/sub
    resp: RespClient  # for every command
    prefix: str
    channel: str
    _events: EventHub
    _io: Callable[[str], ContextManager[None]]

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def _command(self, *command: Any) -> Any:
        """One command's reply; an error reply raised."""
        (reply,) = checked(await self.resp.exchange([command]))
        return reply

    # events ---------------------------------------------------------------
    async def publish(self, channel: str, event: str, payload: bytes) -> None:
        message = frame(channel, event, payload)
        with self._io("PUBLISH"):
            await self._command("PUBLISH", self.channel + channel, message)

    async def subscribe(self, handler: EventHandler, channels: Sequence[str] | None = None) -> Subscription:
        with self._io("SUBSCRIBE"):
            return await self._events.subscribe(handler, channels)

    async def task_events(
        self, items: Sequence[EventItem], envelopes: Sequence[Envelope] = ()
    ) -> None:
        """Records and their events in one round trip."""
        if not items:
            return
        with self._io("task_events"):
            checked(await self.resp.exchange(self._event_commands(items)))

    def _event_commands(self, items: Sequence[EventItem]) -> list[tuple[Any, ...]]:
        """The records, then their events in one PUBLISH: subscribers get them in order.
        A task written twice here (``started`` then ``done``) gets its last record only,
        the one that would stand a moment later anyway; those kept for good go in one MSET."""
        last = {task_id: (body, ttl) for task_id, body, ttl, _ in items}
        kept = [(task_id, body) for task_id, (body, ttl) in last.items() if ttl is None]
        commands: list[tuple[Any, ...]] = []
        if len(kept) > 1:
            mset: list[Any] = ["MSET"]
            for task_id, body in kept:
                mset += (self._key("task", task_id), body)
            commands.append(tuple(mset))
        elif kept:
            commands.append(("SET", self._key("task", kept[0][0]), kept[0][1]))
        for task_id, (body, ttl) in last.items():
            if ttl is not None:
                commands.append(("SET", self._key("task", task_id), body, "PX", ms(ttl)))
        events = batch_frame("task", [(event, body) for _, body, _, event in items])
        commands.append(("PUBLISH", self.channel + "task", events))
        return commands

    # task records -----------------------------------------------------------
    async def set_task(self, task_id: str, body: bytes, ttl: float | None = None) -> None:
        with self._io("set_task"):
            key = self._key("task", task_id)
            await self._command(*(("SET", key, body) if ttl is None else ("SET", key, body, "PX", ms(ttl))))

    async def add_task(self, task_id: str, body: bytes, ttl: float | None = None) -> bytes | None:
        args = [body, "" if ttl is None else ms(ttl)]
        with self._io("add_task"):
            return await ADD_TASK(self.resp, [self._key("task", task_id)], args)

    async def get_tasks(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        with self._io("get_tasks"):
            return await self._command("MGET", *(self._key("task", task_id) for task_id in task_ids))

    async def delete_task(self, task_id: str) -> None:
        with self._io("delete_task"):
            await self._command("DEL", self._key("task", task_id))

    # revocations --------------------------------------------------------------
    async def revoke(self, task_id: str, ttl: float) -> None:
        with self._io("revoke"):
            await self._command("SET", self._key("revoked", task_id), b"1", "PX", ms(ttl))

    async def revoked(self, task_ids: Sequence[str]) -> set[str]:
        if not task_ids:
            return set()
        with self._io("revoked"):
            values = await self._command("MGET", *(self._key("revoked", task_id) for task_id in task_ids))
        return {task_id for task_id, value in zip(task_ids, values) if value is not None}

    # leased counters ----------------------------------------------------------
    async def acquire_slot(self, name: str, limit: int, holder: str, lease: float) -> bool:
        with self._io("acquire_slot"):
            args = [holder, limit, ms(lease)]
            return bool(await ACQUIRE_SLOT(self.resp, [self._key("slots", name)], args))

    async def release_slot(self, name: str, holder: str) -> None:
        with self._io("release_slot"):
            await self._command("ZREM", self._key("slots", name), holder)

    async def renew_slots(self, slots: Sequence[tuple[str, str]], lease: float) -> None:
        if slots:
            keys = [self._key("slots", name) for name, _ in slots]
            args = [ms(lease), *(holder for _, holder in slots)]
            with self._io("renew_slots"):
                await RENEW_SLOTS(self.resp, keys, args)

    async def slot_count(self, name: str) -> int:
        with self._io("slot_count"):
            return await SLOT_COUNT(self.resp, [self._key("slots", name)], [])

    # locks ---------------------------------------------------------------------
    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        with self._io("acquire_lock"):
            args = [holder, ms(ttl)]
            return bool(await ACQUIRE_LOCK(self.resp, [self._key("lock", name)], args))

    async def release_lock(self, name: str, holder: str) -> bool:
        with self._io("release_lock"):
            return bool(await RELEASE_LOCK(self.resp, [self._key("lock", name)], [holder]))

    async def lock_holder(self, name: str) -> str | None:
        with self._io("lock_holder"):
            holder = await self._command("GET", self._key("lock", name))
        return None if holder is None else holder.decode()

    # counters ------------------------------------------------------------------
    async def incr(self, key: str, amount: int = 1) -> int:
        with self._io("incr"):
            return await self._command("HINCRBY", self.prefix + "counters", key, amount)

    async def delete_counters(self, keys: Sequence[str]) -> None:
        if keys:
            with self._io("delete_counters"):
                await self._command("HDEL", self.prefix + "counters", *keys)

    async def get_counters(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        with self._io("get_counters"):
            values = await self._command("HMGET", self.prefix + "counters", *keys)
        return {key: int(value or 0) for key, value in zip(keys, values)}


ADD_TASK = Script("""
-- KEYS[1] task record, ARGV[1] body, ARGV[2] ttl ms or '': the existing record, or nil once stored.
local old = redis.call('GET', KEYS[1])
if old then return old end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return false
""")

_SLOTS = CLOCK + """
-- Let the counter's key expire with its last lease, so a dead holder leaves nothing.
local function expire_with_last(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2]))) end
end
"""

ACQUIRE_SLOT = Script(_SLOTS + """
-- KEYS[1] counter zset (holder -> lease expiry), ARGV[1] holder, ARGV[2] limit, ARGV[3] lease ms.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  expire_with_last(KEYS[1])
  return 1
end
return 0
""")

RENEW_SLOTS = Script(_SLOTS + """
-- KEYS[i] counter zset, ARGV[1] lease ms, ARGV[i + 1] holder of KEYS[i];
-- a slot not held stays free.
local expiry = now_ms() + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 1]) == 1 then expire_with_last(key) end
end
return 0
""")

SLOT_COUNT = Script(CLOCK + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')
""")

ACQUIRE_LOCK = Script("""
-- KEYS[1] lock, ARGV[1] holder, ARGV[2] ttl ms: take it if free, renew it if ours.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

RELEASE_LOCK = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
