"""Redis suite (issue 5): pq on Redis against arq, saq, streaq, taskiq-redis,
dramatiq, celery, rq and huey, on one private redis-server started here.

Every system: 20,000 jobs whose body is one Redis INCR, 2 worker processes,
drain timed by the counter; single enqueue calls (one by one and
concurrent), the batch API where there is one, and the latency of one task
on an idle server.  pq runs ``--data-store redis://`` with its defaults:
task records, results and events on.
"""
from __future__ import annotations

import uuid
from typing import Any

from common import RedisServer, base_env, fmt, log, ratio, table
from suite_common import Plan, Result, measure

PEERS = ["arq", "saq", "streaq", "taskiq", "dramatiq", "celery", "rq", "huey"]

TARGETS = {
    "drain": 2.0,            # >= 2x the fastest peer
    "enqueue_sequential": 2.0,
    "batch": 30_000,         # tasks/s
    "latency_p50_ms": 2.0,
}


def run(args: Any) -> dict[str, Any]:
    plan = Plan(jobs=args.jobs, latency=args.latency, sequential=args.sequential, batch=args.batch,
                concurrency=args.concurrency, concurrent=args.concurrent)
    systems = ["pq"] + [peer for peer in PEERS if not args.peers or peer in args.peers]
    redis = RedisServer().start()
    log(f"redis suite: private redis-server on port {redis.port}")
    results: list[Result] = []
    try:
        for system in systems:
            run_id = uuid.uuid4().hex[:8]
            env = base_env(
                BENCH_BROKER="redis", BENCH_REDIS_URL=redis.url, BENCH_QUEUE=f"bench{run_id}",
                BENCH_COUNTER=f"bench:{run_id}:counter",
                PQ_DATA_STORE=redis.url, PQ_NAMESPACE=f"bench{run_id}", PQ_TASK_QUEUES=f"bench{run_id}",
                PQ_LOG_LEVEL="warning",
            )
            results.append(measure(system, env, redis, plan))
    finally:
        redis.stop()
    return report(results, plan, "redis")


def report(results: list[Result], plan: Plan, broker: str, targets: bool = True) -> dict[str, Any]:
    pq = results[0]
    peers = results[1:]
    headers = ["system", "drain tasks/s", "pq/peer", "enqueue 1-by-1 /s", "pq/peer",
               f"enqueue x{plan.concurrency} /s", "pq/peer", "batch /s", "idle p50 ms", "p99 ms", "pq/peer p50"]
    rows = []
    for r in results:
        p50 = r.latency["run"]["p50_ms"] if r.latency else None
        pq50 = pq.latency["run"]["p50_ms"] if pq.latency else None
        rows.append([
            r.system, r.rate("drain") or ("failed" if r.error else None), ratio(pq.rate("drain"), r.rate("drain")) if r is not pq else None,
            r.rate("enqueue_sequential"),
            ratio(pq.rate("enqueue_sequential"), r.rate("enqueue_sequential")) if r is not pq else None,
            r.rate("enqueue_concurrent"),
            ratio(pq.rate("enqueue_concurrent"), r.rate("enqueue_concurrent")) if r is not pq else None,
            r.rate("batch"), p50, r.latency["run"]["p99_ms"] if r.latency else None,
            ratio(pq50, p50) if r is not pq else None,
        ])
    text = table(headers, rows)
    extra = []
    if pq.pq_latency:
        s, d = pq.pq_latency["started"], pq.pq_latency["done"]
        extra.append(f"pq api latency on the idle server ({s['n']} sequential `await api.tasks.queue('noop')`): "
                     f"queue() -> started p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms; "
                     f"queue() -> done seen by the api p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms")
    for r in results:
        extra += r.notes
    if pq.drain:
        extra.append(f"pq drain: {pq.drain['seconds']:.2f} s for {plan.jobs} tasks after a start-up of "
                     f"{pq.drain['startup']:.2f} s (wall {pq.drain['wall']:.2f} s)")
    verdicts: list[tuple[str, bool | None, str]] = []
    if targets:
        def best(name: str) -> tuple[str, float] | None:
            rated = [(r.system, r.rate(name)) for r in peers if r.rate(name)]
            return max(rated, key=lambda item: item[1]) if rated else None

        for name, label in (("drain", "drain rate"), ("enqueue_sequential", "single-task enqueue (1 by 1)")):
            top = best(name)
            if top and pq.rate(name):
                got = pq.rate(name) / top[1]
                verdicts.append((f"{label} >= 2x the fastest peer", got >= 2.0,
                                 f"{got:.2f}x {top[0]} ({fmt(pq.rate(name))} vs {fmt(top[1])} tasks/s)"))
        if pq.batch:
            verdicts.append(("batch enqueue >= 30,000 tasks/s", pq.batch["per_second"] >= 30_000,
                             f"{fmt(pq.batch['per_second'])} tasks/s (queue_many, chunks of {pq.batch['chunk']})"))
        if pq.latency:
            p50 = pq.latency["run"]["p50_ms"]
            verdicts.append(("idle latency p50 < 2 ms", p50 < 2.0, f"{p50:.2f} ms (enqueue -> job ran)"))
    return {"suite": broker, "table": text, "notes": extra, "targets": verdicts,
            "raw": [r.__dict__ for r in results]}
