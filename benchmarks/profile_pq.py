"""Where a pq consumer's time goes: Redis commands per task, CPU per process, hot functions.

    .venv/bin/python benchmarks/profile_pq.py [--store redis|sqlite|amqp] [--jobs 20000] [--py-spy]

Starts a private redis-server and ``pq_bench.py -w 2`` on it (or on sqlite, or
with RabbitMQ as the broker and that Redis as the data store), queues
``--jobs`` INCR tasks, then drains them while recording:

- Redis ``INFO commandstats`` before and after: commands (and round trips
  of scripts) per task, split into the drain and, separately, one enqueue;
- CPU seconds of every process of the server (arbiter, consumers,
  scheduler, monitor), of redis-server and, with ``--store amqp``, of
  RabbitMQ (``beam.smp``: run nothing else on it meanwhile), per task;
- with ``--py-spy`` (installed in benchmarks/.venv-peers), a sampling
  profile of one consumer: the functions with the most samples, own and
  inclusive.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402

from common import PEERS_BIN, PQ_PYTHON, Procs, RedisServer, base_env, drain, driver, table, wait_for  # noqa: E402


def commandstats(client: Any) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in client.info("commandstats").items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def cpu(procs: list[psutil.Process]) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[f"{proc.name()}"] += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def hot(raw: Path, top: int = 25) -> dict[str, list[list[Any]]]:
    """Sample shares per function from py-spy's collapsed stacks: own, inclusive, and inclusive of pq's own."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    ours: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            path = where.split(":")[0]
            frames.append((f"{name} ({path.split('/')[-1]})", path.startswith("pq/") or "/pq/" in path and "site-packages" not in path))
        own[frames[-1][0]] += n
        for frame, in_pq in set(frames):
            incl[frame] += n
            if in_pq:
                ours[frame] += n

    def rows(counter: collections.Counter) -> list[list[Any]]:
        return [[name, f"{100 * n / total:.1f}%"] for name, n in counter.most_common(top)]

    return {"own": rows(own), "inclusive": rows(incl), "pq inclusive": rows(ours)}


def sqlite_counter(path: Path, namespace: str) -> Any:
    from suite_sqlite import counter

    return counter(path, "SELECT count(*) FROM pq_messages WHERE namespace = ?", (namespace,))


def cleanup(store: str, redis: RedisServer, token: str, tmp: Path) -> None:
    redis.flush()
    if store == "amqp":
        from suite_amqp import delete_objects

        delete_objects(token)
    for path in tmp.glob("pq.sqlite3*"):
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--store", choices=["redis", "sqlite", "amqp"], default="redis",
                        help="redis://; sqlite:// (no-op jobs); amqp:// broker with a redis:// data store")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy also samples C frames (uvloop, hiredis)")
    args = parser.parse_args()
    redis = RedisServer().start()
    token = f"pqbench{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="pq-profile-"))
    settings = {"PQ_DATA_STORE": redis.url}
    job = "incr"
    if args.store == "sqlite":
        settings, job = {"PQ_DATA_STORE": f"sqlite:///{tmp / 'pq.sqlite3'}"}, "noop"
    elif args.store == "amqp":
        settings["PQ_MESSAGE_BROKER"] = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    env = base_env(BENCH_REDIS_URL=redis.url, BENCH_COUNTER=f"{token}:counter", PQ_NAMESPACE=token,
                   PQ_TASK_QUEUES=token, PQ_LOG_LEVEL="warning", **settings)
    client = redis.client()
    if args.store == "sqlite":
        left = sqlite_counter(tmp / "pq.sqlite3", token)
        progress = lambda: args.jobs - left()  # noqa: E731
    else:
        progress = lambda: int(client.get(f"{token}:counter") or 0)  # noqa: E731
    server = Procs("pq-profile")
    try:
        before = commandstats(client)
        driver("pq", "enqueue", env, n=1000, concurrency=1, job=job)
        enq = delta(commandstats(client), before)
        cleanup(args.store, redis, token, tmp)
        driver("pq", "batch", env, n=args.jobs, chunk=25, job=job)
        server.start([PQ_PYTHON, "pq_bench.py", "-w", "2"], env)
        arbiter = psutil.Process(server.popens[0].pid)
        wait_for(lambda: len(arbiter.children()) >= 4, 20, what="the actors")
        time.sleep(0.3)
        everyone = [arbiter, *arbiter.children(), psutil.Process(redis.procs.popens[0].pid)]
        if args.store == "amqp":  # the shared RabbitMQ: its CPU during the drain is pq's
            everyone += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        consumers = [p for p in arbiter.children() if "consumer" in p.name()]
        spy = None
        raw = Path(f"/tmp/pq-pyspy-{token}.txt")
        if args.py_spy and consumers:
            spy = subprocess.Popen([str(PEERS_BIN / "py-spy"), "record", "-p", str(consumers[0].pid), "-r",
                                    str(args.rate), "-f", "raw", "-o", str(raw),
                                    *(["--native"] if args.native else ["--nonblocking"])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before, cpu_before = commandstats(client), cpu(everyone)
        already = progress()
        done = drain(progress, args.jobs, 300, server, interval=0.02)
        during, cpu_after = delta(commandstats(client), before), cpu(everyone)
        counted = args.jobs - already  # tasks run while measuring
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
    finally:
        server.stop()
        cleanup(args.store, redis, token, tmp)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ndrain: {done['per_second']:,.0f} tasks/s ({args.jobs} tasks, {done['seconds']:.2f} s)\n")
    per = lambda d, n: sorted(([k, v, v / n] for k, v in d.items()), key=lambda r: -r[1])  # noqa: E731
    if args.store == "sqlite":
        during = enq = {}
    print("Redis commands during the drain, per task (data store and the jobs' INCR):\n")
    print(table(["command", "calls", "per task"], per(during, counted)) if during else "(none)")
    print(f"\ntotal {sum(during.values()) / counted:.2f} commands per task (commands inside scripts"
          " included; evalsha, publish, set, get/mget, incrby and blpop are round trips)\n")
    print(f"Redis commands of 1000 single `await api.tasks.queue({job!r}, callback=False)`, per task:\n")
    print(table(["command", "calls", "per task"], per(enq, 1000)) if enq else "(none)")
    print("\nCPU seconds during the drain:\n")
    rows = [[name, cpu_after[name] - cpu_before.get(name, 0.0),
             1000 * (cpu_after[name] - cpu_before.get(name, 0.0)) / counted] for name in cpu_after]
    print(table(["process", "cpu s", "cpu ms per task"], sorted(rows, key=lambda r: -r[1])))
    print(f"\ntotal {sum(r[2] for r in rows):.3f} ms of CPU per task on {os.cpu_count()} cores")
    if args.py_spy and raw.exists():
        for title, rows in hot(raw).items():
            print(f"\npy-spy, one consumer, {title}:\n")
            print(table(["function", "samples"], rows))
        print(f"\nraw stacks: {raw}")


if __name__ == "__main__":
    main()
