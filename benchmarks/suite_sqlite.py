"""sqlite suite (issue 4): pq's embedded sqlite store against huey's SqliteHuey.

Both in WAL mode with ``synchronous=NORMAL``, each on a fresh file.  The
drain: ``jobs`` no-op tasks queued first, then two worker processes started
(``pq_bench.py -w 2``; ``huey_consumer -w 2 -k process``), timed from the
first task done to the last.  Done means, for pq, no message left in its
queue table (a message is deleted when acknowledged, after its result and
done event are stored); for huey, one stored result per task (the job
returns 1).  Then the latency of pq on the idle server: sequential
``await api.tasks.queue('noop')``, queue() -> started and -> done.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from common import PEERS_BIN, PQ_PYTHON, Procs, base_env, drain, driver, log, ratio, table


def counter(path: Path, sql: str, args: tuple) -> Callable[[], int]:
    conn: sqlite3.Connection | None = None

    def count() -> int:
        nonlocal conn
        if conn is None:
            if not path.exists():
                return 0
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchone()[0]
        except sqlite3.OperationalError:  # tables not made yet, or busy
            return 0

    return count


def run(args: Any) -> dict[str, Any]:
    n = args.jobs
    tmp = Path(tempfile.mkdtemp(prefix="pq-bench-sqlite-"))
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    try:
        # pq ---------------------------------------------------------------------------
        ns = f"bench{uuid.uuid4().hex[:8]}"
        db = tmp / "pq.sqlite3"
        env = base_env(PQ_DATA_STORE=f"sqlite:///{db}", PQ_NAMESPACE=ns, PQ_TASK_QUEUES=ns, PQ_LOG_LEVEL="warning")
        procs = Procs("pq-sqlite")
        try:
            log(f"pq: queue {n} no-op tasks (queue_many)")
            pre = driver("pq", "batch", env, n=n, job="noop", chunk=1000)
            left = counter(db, "SELECT count(*) FROM pq_messages WHERE namespace = ?", (ns,))
            assert left() == n, f"{left()} messages queued, expected {n}"
            procs.start([PQ_PYTHON, "pq_bench.py", "-w", "2"], env)
            rows["pq"] = {"enqueue": pre, "drain": drain(lambda: n - left(), n, 300, procs, interval=0.02)}
            log(f"pq: drained at {rows['pq']['drain']['per_second']:,.0f} tasks/s")
            time.sleep(0.5)
            rows["pq"]["latency"] = driver("pq", "pq-latency", env, n=args.latency, job="noop")
        except Exception as exc:
            notes.append(f"pq failed: {' '.join(str(exc).split())[-300:]}")
            log(notes[-1])
        finally:
            procs.stop()
        # huey -------------------------------------------------------------------------
        name = f"bench{uuid.uuid4().hex[:8]}"
        hdb = tmp / "huey.sqlite3"
        env = base_env(BENCH_BROKER="sqlite", BENCH_SQLITE=str(hdb), BENCH_QUEUE=name)
        procs = Procs("huey-sqlite")
        try:
            log(f"huey: queue {n} no-op tasks")
            pre = driver("huey", "enqueue", env, n=n, job="noop")
            results = counter(hdb, "SELECT count(*) FROM kv WHERE queue = ?", (name,))
            procs.start([str(PEERS_BIN / "huey_consumer"), "huey_peer.huey", "-w", "2", "-k", "process", "-q"], env)
            rows["huey"] = {"enqueue": pre, "drain": drain(results, n, 300, procs, interval=0.02)}
            log(f"huey: drained at {rows['huey']['drain']['per_second']:,.0f} tasks/s")
        except Exception as exc:
            notes.append(f"huey failed: {' '.join(str(exc).split())[-300:]}")
            log(notes[-1])
        finally:
            procs.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(rows, notes, n)


def report(rows: dict[str, dict[str, Any]], notes: list[str], n: int) -> dict[str, Any]:
    def rate(system: str, what: str) -> float | None:
        return rows.get(system, {}).get(what, {}).get("per_second")

    headers = ["system", "drain tasks/s", "pq/peer", "drain s", "start-up s", "enqueue tasks/s (how)"]
    body = []
    for system, how in (("pq", "queue_many, 1000 a call"), ("huey", "one call a task")):
        if system not in rows:
            body.append([system, "failed", None, None, None, None])
            continue
        d = rows[system]["drain"]
        body.append([system, d["per_second"], ratio(rate("pq", "drain"), d["per_second"]) if system != "pq" else None,
                     d["seconds"], d["startup"], f"{rate(system, 'enqueue'):,.0f} ({how})"])
    text = table(headers, body)
    lat = rows.get("pq", {}).get("latency")
    if lat:
        text += "\n\n" + table(["pq on an idle sqlite server", "p50 ms", "p90 ms", "p99 ms", "max ms"], [
            ["queue() -> started", lat["started"]["p50_ms"], lat["started"]["p90_ms"], lat["started"]["p99_ms"],
             lat["started"]["max_ms"]],
            ["queue() -> done (seen by the api)", lat["done"]["p50_ms"], lat["done"]["p90_ms"],
             lat["done"]["p99_ms"], lat["done"]["max_ms"]],
        ])
        notes = [f"latency over {lat['done']['n']} sequential tasks after 10 of warm-up"] + notes
    return {"suite": "sqlite", "table": text, "notes": notes, "targets": [], "raw": rows}
