"""Prometheus text exposition (format 0.0.4) of the cluster's figures, for ``/metrics``.

Queue sizes and last-minute throughput are gauges labelled by ``queue``;
finished tasks are counters labelled by ``queue`` and ``outcome``; each
actor's process figures are gauges labelled by ``server``, ``actor`` and
``kind``. Built from the dict of :func:`pq.stats.cluster_stats`.
"""
from __future__ import annotations

from typing import Any, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUEUE_GAUGES = (
    ("ready", "pq_queue_ready", "Tasks ready to run, waiting in the queue."),
    ("delayed", "pq_queue_delayed", "Tasks waiting for their eta or retry delay."),
    ("inflight", "pq_queue_inflight", "Tasks taken by a consumer and not yet acknowledged."),
    ("dead", "pq_queue_dead_letters", "Dead letters of the queue."),
)
ACTOR_GAUGES = (
    ("cpu_percent", "pq_actor_cpu_percent", "CPU use of the actor's process, percent of one core."),
    ("rss", "pq_actor_resident_memory_bytes", "Resident memory of the actor's process."),
    ("open_files", "pq_actor_open_files", "Files the actor's process has open."),
    ("threads", "pq_actor_threads", "Threads of the actor's process."),
    ("uptime", "pq_actor_uptime_seconds", "Seconds since the actor's process started."),
    ("inflight", "pq_actor_tasks_inflight", "Tasks the consumer is running now."),
)


def escape(value: Any) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value: exact for whole numbers (byte counts), Go-style names for the special floats."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(int(value))
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels.items()) + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {number(value)}" for labels, value in samples]
    return lines


def render(stats: dict[str, Any]) -> str:
    """Every metric family, one per figure, in the text format."""
    queues = stats["queues"]
    lines: list[str] = []
    for key, name, help_text in QUEUE_GAUGES:
        lines += _family(name, "gauge", help_text, (({"queue": q["name"]}, q[key]) for q in queues))
    lines += _family(
        "pq_tasks_total", "counter", "Tasks finished (or retried) since the store was created, by outcome.",
        (({"queue": q["name"], "outcome": o}, n) for q in queues for o, n in q["totals"].items()),
    )
    lines += _family(
        "pq_tasks_last_minute", "gauge", "Tasks finished (or retried) over the last minute, by outcome.",
        (({"queue": q["name"], "outcome": o}, n) for q in queues for o, n in q["last_minute"].items()),
    )
    servers = stats["servers"]
    lines += _family("pq_servers", "gauge", "Servers that reported recently.", [({}, len(servers))])
    actors = [(server["node"], actor) for server in servers for actor in server.get("actors", [])]
    for key, name, help_text in ACTOR_GAUGES:
        lines += _family(name, "gauge", help_text, (
            ({"server": node, "actor": actor["name"], "kind": actor["kind"]}, actor[key])
            for node, actor in actors if isinstance(actor.get(key), (int, float))
        ))
    lines += _family(
        "pq_actor_tasks_processed_total", "counter", "Tasks the consumer process has run.",
        (({"server": node, "actor": actor["name"], "kind": actor["kind"]}, actor["processed"])
         for node, actor in actors if isinstance(actor.get("processed"), (int, float))),
    )
    return "\n".join(lines) + "\n"
