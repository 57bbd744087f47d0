"""Names, options and arguments of the RabbitMQ objects of one namespace.

Kept apart from the broker so the topology can be read (and tested) without a
server: which exchange and routing key a queue publishes to, what each queue
is declared with, and how a delay is rounded to a delay queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pamqp.commands import Basic

from ..exceptions import ImproperlyConfigured

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
GRACE_MS = 60_000
"""Idle delay queues live this long past their TTL, so none expires holding a message."""

HDR_DELIVERIES = "x-pq-deliveries"
HDR_ETA = "x-pq-eta"
HDR_QUEUE = "x-pq-queue"
HDR_REASON = "x-pq-reason"
HDR_TIME = "x-pq-time"
"""Headers hold ints (ms): AMQP tables carry floats in 32 bits."""

Target = tuple[str, str]
"""``(exchange, routing_key)`` a message is published with."""


def _pairs(value: Any, parts: int, what: str) -> list[tuple[str, ...]]:
    """``"a:b,c:d"`` (URL form) or a list of tuples (Python form) as tuples of ``parts`` strings."""
    if isinstance(value, str):
        items = [tuple(item.split(":", parts - 1)) for item in value.split(",") if item.strip()]
    elif isinstance(value, Mapping):
        items = [(k, *v) if isinstance(v, (tuple, list)) else (k, v) for k, v in value.items()]
    else:
        items = [tuple(item) for item in value or ()]
    for item in items:
        if len(item) != parts or not all(str(x).strip() for x in item[:1]):
            raise ImproperlyConfigured(f"amqp option {what}: bad entry {':'.join(map(str, item))!r}")
    return [tuple(str(x).strip() for x in item) for item in items]


@dataclass
class AmqpOptions:
    """Broker options, from keyword arguments or the URL query string (documented on AmqpBroker)."""

    queue_type: str = "classic"
    broadcast: Sequence[str] = ()
    prefetch: Mapping[str, int] = field(default_factory=dict)
    exchanges: Mapping[str, str] = field(default_factory=dict)
    routes: Mapping[str, Target] = field(default_factory=dict)
    bindings: Sequence[tuple[str, str, str]] = ()
    delay_hold: float = 0.05
    publish_timeout: float = 30.0
    reconnect_interval: float = 1.0
    connection_name: str = ""
    dead_scan_limit: int = 1000

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> tuple[str, AmqpOptions]:
        """Split pq's options out of the URL query; the rest (heartbeat...) stays for aio-pika."""
        parts = urlsplit(url)
        known = set(cls.__dataclass_fields__)
        query = parse_qsl(parts.query, keep_blank_values=True)
        values = {k: v for k, v in query if k in known}
        values.update({k: v for k, v in options.items() if k in known})
        unknown = set(options) - known
        if unknown:
            raise ImproperlyConfigured(
                f"unknown amqp broker option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        rest = urlencode([(k, v) for k, v in query if k not in known])
        return urlunsplit(parts._replace(query=rest)), cls._checked(values)

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> AmqpOptions:
        opts = cls()
        try:
            for name in ("delay_hold", "publish_timeout", "reconnect_interval"):
                if name in values:
                    setattr(opts, name, float(values[name]))
            if "dead_scan_limit" in values:
                opts.dead_scan_limit = int(values["dead_scan_limit"])
        except ValueError as exc:
            raise ImproperlyConfigured(f"amqp broker option: {exc}") from None
        opts.connection_name = str(values.get("connection_name", ""))
        opts.queue_type = str(values.get("queue_type", "classic")).lower()
        if opts.queue_type not in ("classic", "quorum"):
            raise ImproperlyConfigured(f"amqp queue_type must be classic or quorum, not {opts.queue_type!r}")
        broadcast = values.get("broadcast", ())
        opts.broadcast = tuple(broadcast.split(",") if isinstance(broadcast, str) else broadcast)
        try:
            opts.prefetch = {q: int(n) for q, n in _pairs(values.get("prefetch"), 2, "prefetch")}
        except ValueError:
            raise ImproperlyConfigured("amqp option prefetch: counts must be integers, as in emails:5") from None
        opts.exchanges = dict(_pairs(values.get("exchanges"), 2, "exchanges"))
        for name, kind in opts.exchanges.items():
            if kind not in EXCHANGE_TYPES:
                raise ImproperlyConfigured(f"amqp exchange {name!r}: type must be one of {EXCHANGE_TYPES}")
        opts.routes = {q: (e, k) for q, e, k in _pairs(values.get("routes"), 3, "routes")}
        opts.bindings = [tuple(b) for b in _pairs(values.get("bindings"), 3, "bindings")]
        return opts


@dataclass(slots=True)
class Outgoing:
    """One message to publish, and what must be declared before (queue, delay queue)."""

    exchange: str
    key: str
    body: bytes
    properties: Basic.Properties
    queue: str | None = None
    bucket: tuple[str, dict[str, Any]] | None = None
    mandatory: bool = True
    returned: bool = False


class Topology:
    """RabbitMQ names and arguments for one namespace; every name starts with ``{namespace}.``."""

    def __init__(self, namespace: str, options: AmqpOptions) -> None:
        self.ns = namespace
        self.options = options
        self.dead = f"{namespace}.dead"
        self.events = f"{namespace}.events"

    def queue(self, queue: str) -> str:
        """The durable work queue of a pq queue."""
        if queue == "dead" or queue.startswith("delay."):
            raise ImproperlyConfigured(f"queue name {queue!r} is reserved by the amqp broker; rename the queue")
        return f"{self.ns}.{queue}"

    def exchange(self, name: str) -> str:
        return f"{self.ns}.{name}"

    def exchange_type(self, name: str) -> str:
        return self.options.exchanges.get(name, "direct")

    def is_broadcast(self, queue: str) -> bool:
        return queue in self.options.broadcast

    def route(self, queue: str) -> Target:
        """Where an enqueued message of ``queue`` is published: its exchange and routing key."""
        if self.is_broadcast(queue):
            return self.exchange(queue), ""
        if queue in self.options.routes:
            exchange, key = self.options.routes[queue]
            return self.exchange(exchange), key
        return "", self.queue(queue)

    def bindings(self, queue: str) -> list[tuple[str, str, str]]:
        """``(exchange name, exchange type, routing key)`` the work queue of ``queue`` is bound with."""
        out = []
        if queue in self.options.routes:
            exchange, key = self.options.routes[queue]
            out.append((self.exchange(exchange), self.exchange_type(exchange), key))
        for q, exchange, key in self.options.bindings:
            if q == queue:
                out.append((self.exchange(exchange), self.exchange_type(exchange), key))
        return out

    def queue_arguments(self) -> dict[str, Any]:
        """Work queues send what a consumer rejects without requeue to the dead letters."""
        args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dead}
        if self.options.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        return args

    def dead_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.options.queue_type == "quorum" else {}

    def broadcast_queue(self, queue: str, owner: str, token: str = "") -> str:
        """The queue receiving one server's (or one consumer's) copy of a broadcast queue."""
        return f"{self.queue(queue)}@{owner}" + (f".{token}" if token else "")

    def bucket(self, target: Target, ms: int) -> tuple[str, dict[str, Any]]:
        """Name and arguments of the delay queue holding messages for ``target`` for ``ms``."""
        exchange, key = target
        prefix = f"{self.ns}."
        if exchange:
            label = f"{exchange.removeprefix(prefix)}>{key}"
        else:
            label = key.removeprefix(prefix)
        args = {
            "x-message-ttl": ms,
            "x-expires": ms + GRACE_MS,
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": key,
        }
        return f"{self.ns}.delay.{ms}.{label}", args


def bucket_ms(delay: float) -> int:
    """A delay rounded *down* to two significant digits of milliseconds (1234 ms -> 1200 ms).

    Rounding down means a message never comes out late because of rounding;
    it may come out up to ~10% early, and the consumer then sends it round
    again for what is left (or holds it, under ``delay_hold``).  Two digits
    keep the number of delay queues small (90 per decade) while a remainder
    needs at most a few more hops.
    """
    ms = max(int(delay * 1000), 1)
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return ms // scale * scale
