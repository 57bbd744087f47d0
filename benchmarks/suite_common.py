"""One system through the measurements of the Redis and AMQP suites.

For each system, on a flushed private Redis (and fresh queue names):

1. time ``concurrent`` single enqueue calls, ``concurrency`` of them in flight;
   then queue the ``jobs`` INCR tasks of the drain the fastest way the system has;
2. start its two worker processes and time the drain: the counter the
   jobs INCR, polled, from the first task done to the last;
3. on the now idle server, ``latency`` sequential tasks: enqueue -> job ran;
4. stop the workers by pid; time ``sequential`` enqueue calls awaited one by
   one, then the batch API where the system has one.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from common import PEERS_BIN, PQ_PYTHON, Procs, RedisServer, driver, drain, log


@dataclass
class Plan:
    jobs: int = 20_000
    concurrency: int = 32
    sequential: int = 2_000
    concurrent: int = 3_000
    batch: int = 20_000
    latency: int = 200
    drain_timeout: float = 240.0


@dataclass
class Result:
    system: str
    drain: dict[str, Any] | None = None
    enqueue_concurrent: dict[str, Any] | None = None
    pre_enqueue: dict[str, Any] | None = None
    enqueue_sequential: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    pq_latency: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def rate(self, name: str) -> float | None:
        value = getattr(self, name)
        return value.get("per_second") if value else None


def worker_argv(system: str, env: dict[str, str]) -> list[list[str]]:
    if system == "pq":
        return [[PQ_PYTHON, "pq_bench.py", "-w", "2"]]
    # The peer module lives in the peers' virtualenv: ask it for its command lines.
    code = f"import json, {system}_peer as m; print(json.dumps(m.worker_commands({str(PEERS_BIN)!r})))"
    out = subprocess.run([str(PEERS_BIN / "python"), "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(system: str, env: dict[str, str], redis: RedisServer, plan: Plan,
            cleanup: Callable[[], None] = lambda: None) -> Result:
    """Every step on its own: one that fails is noted and the others still count."""
    result = Result(system)
    counter = env["BENCH_COUNTER"]
    client = redis.client()
    procs = Procs(f"{system}-{env.get('BENCH_BROKER', 'redis')}")

    def step(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # one step failing must not lose the others' figures
            message = " ".join(str(exc).split())[-300:] or type(exc).__name__
            log(f"{system}: {name} FAILED: {message}")
            result.notes.append(f"{system} {name} failed: {message}")
            if name == "drain":
                result.error = f"drain failed: {message[:120]}"
            return None

    def fresh() -> None:
        redis.flush()
        cleanup()

    try:
        fresh()
        log(f"{system}: {plan.concurrent} enqueue calls, {plan.concurrency} in flight")
        result.enqueue_concurrent = step("concurrent enqueue", lambda: driver(
            system, "enqueue", env, n=plan.concurrent, concurrency=plan.concurrency))
        fresh()
        log(f"{system}: queue the {plan.jobs} tasks of the drain")
        # The fastest way each system has (pq's batch API in small chunks; see README).
        queued = step("pre-enqueue", lambda: driver(
            system, "batch", env, n=plan.jobs, chunk=25 if system == "pq" else 1000)) or {}
        if not queued.get("per_second"):
            queued = step("pre-enqueue", lambda: driver(
                system, "enqueue", env, n=plan.jobs, concurrency=plan.concurrency)) or {}
        result.pre_enqueue = queued or None
        if queued:
            log(f"{system}: starting 2 workers")

            def run_drain() -> dict[str, Any]:
                for argv in worker_argv(system, env):
                    procs.start(argv, env)
                return drain(lambda: int(client.get(counter) or 0), plan.jobs, plan.drain_timeout, procs)

            result.drain = step("drain", run_drain)
            if result.drain:
                log(f"{system}: drained at {result.drain['per_second']:,.0f} tasks/s "
                    f"(start-up {result.drain['startup']:.2f} s)")
                time.sleep(0.5)
                result.latency = step("latency", lambda: driver(system, "latency", env, n=plan.latency))
                if system == "pq":
                    result.pq_latency = step("api latency", lambda: driver(
                        system, "pq-latency", env, n=plan.latency, job="noop"))
                if result.latency:
                    log(f"{system}: latency p50 {result.latency['run']['p50_ms']:.2f} ms")
        procs.stop()
        fresh()
        result.enqueue_sequential = step("sequential enqueue", lambda: driver(
            system, "enqueue", env, n=plan.sequential, concurrency=1))
        for chunk in (1000, 25):
            fresh()
            batch = step(f"batch enqueue (chunks of {chunk})", lambda: driver(
                system, "batch", env, n=plan.batch, chunk=chunk))
            if batch is not None:
                result.batch = batch if batch.get("per_second") else None
                break
    finally:
        procs.stop()
        fresh()
    return result
