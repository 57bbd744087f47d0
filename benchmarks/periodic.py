"""How late an every-second periodic job starts after its slot (issue 7).

    .venv/bin/python benchmarks/periodic.py [--samples 60] [--store sqlite|redis]

Starts the example server with --schedule-periodic, listens to the `task`
events of `testperiodic` (run_every=1 s) and reports, over --samples slots,
how long after its slot each task was queued by the scheduler and started by
a consumer: p50, p99 and max in milliseconds.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=60, help="slots to measure (one per second)")
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    import manage

    tmp = tempfile.mkdtemp(prefix="pq-periodic-")
    store = f"sqlite:///{tmp}/pq.sqlite3" if args.store == "sqlite" else args.redis
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "-w", "2", "--schedule-periodic", "--data-store", store,
         "--namespace", namespace, "--log-level", "warning"], cwd=ROOT,
    )
    api = manage.PulsarQueue(config=manage.__file__, data_store=store, namespace=namespace).api()
    queued: list[float] = []
    started: list[float] = []
    enough = threading.Event()

    def on_event(channel: str, event: str, task) -> None:
        if task.name != "testperiodic" or "slot" not in task.meta:
            return
        if event == "queued":
            queued.append(task.time_queued - task.meta["slot"])
        elif event == "started":
            started.append(task.time_started - task.meta["slot"])
            if len(started) >= args.samples:
                enough.set()

    api.on_events("task", "*", on_event)
    try:
        if not enough.wait(args.samples * 2 + 30):
            print(f"only {len(started)} samples arrived", file=sys.stderr)
            return 1
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(60)
        if args.store == "redis":
            api.call(api.store.drop()).result(30)
        api.close().wait(10)
    print(f"every-second job on {args.store}, {len(started)} slots, {os.cpu_count()} cores")
    print(f"{'from its slot to':<18} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, values in (("queued", queued), ("started", started)):
        ms = [v * 1000 for v in values]
        print(f"{label:<18} {statistics.median(ms):8.1f} {percentile(ms, 0.99):8.1f} {max(ms):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
