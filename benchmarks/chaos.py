"""The heavy reliability runs behind docs/reliability.md (``make chaos``).

    .venv/bin/python benchmarks/chaos.py [killed-workers broker-outage soak checks] [--out results.md]

The scenarios of tests/reliability (``chaos_scenarios``), at full size:

* killed-workers: 10,000 tasks, 4 consumers, one SIGKILLed every 0.5 s, on
  sqlite, Redis, RabbitMQ + sqlite and RabbitMQ + Redis;
* broker-outage: 10,000 tasks while the broker (a private redis-server or
  rabbitmq-server on a free port; for sqlite the whole pq server) is killed
  for 5 s and started again, a producer queueing all along; on sqlite,
  Redis, RabbitMQ + sqlite and RabbitMQ + Redis (the shared Redis);
* soak: 100,000 tasks through one consumer (sqlite, Redis, RabbitMQ + Redis);
  its RSS may grow at most 10% after the first 10,000;
* checks: the hostile-message, signing and credential tests, and the
  decoder fuzzing with 5,000 examples per property.

Redis and RabbitMQ are the machine's (127.0.0.1:6379 and :5672, or
PQ_TEST_REDIS / PQ_TEST_AMQP), each run in its own namespace, dropped after.
Prints one table row per run, and writes the table to ``--out``.  Exits 1 if
any run lost a task, left one unfinished or failed a check.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "reliability"), str(ROOT / "tests" / "e2e")]

import chaos_brokers as private  # noqa: E402
import chaos_harness as harness  # noqa: E402
import chaos_scenarios as scenarios  # noqa: E402

HEADER = ("| scenario | broker | tasks | lost | duplicated | recovery time | wall time | notes |\n"
          "|---|---|---:|---:|---:|---:|---:|---|")
SCENARIOS = ("killed-workers", "broker-outage", "soak", "checks")
KILL_BROKERS = ("sqlite", "redis", "amqp+sqlite", "amqp+redis")
OUTAGE_BROKERS = ("sqlite", "redis", "amqp+sqlite", "amqp+redis")
SOAK_BROKERS = ("sqlite", "redis", "amqp+redis")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_killed_workers(brokers: list[str], tasks: int) -> list[harness.Result]:
    results = []
    for name in brokers:
        if not all(private.reachable(url) for url in harness.shared_servers(name)):
            log(f"killed-workers on {name}: skipped, its server is not reachable")
            continue
        with tempfile.TemporaryDirectory(prefix="pq-chaos-") as folder:
            setup = harness.setup_for(name, Path(folder))
            try:
                results.append(scenarios.killed_workers(setup, Path(folder), tasks, consumers=4, interval=0.5,
                                                      lag=0.02, timeout=900))
            finally:
                if name != "sqlite":
                    setup.drop()
        log(results[-1].row())
    return results


def run_broker_outage(brokers: list[str], tasks: int) -> list[harness.Result]:
    results = []
    for name in brokers:
        with tempfile.TemporaryDirectory(prefix="pq-chaos-") as folder:
            try:
                broker = private.private_broker(name, Path(folder))
            except private.Unavailable as exc:
                log(f"broker-outage on {name}: skipped, {exc}")
                continue
            if not all(map(private.reachable, harness.shared_servers(name, **scenarios.private_urls(name, broker)))):
                log(f"broker-outage on {name}: skipped, its data store's server is not reachable")
                continue
            setup = scenarios.outage_setup(name, Path(folder), broker)
            try:
                if broker is not None:
                    broker.start()
                results.append(scenarios.broker_outage(setup, Path(folder), broker, tasks, lag=0.005, down=5.0,
                                                       timeout=900))
                setup.drop()  # while the private broker runs: amqp+redis keeps records on the shared Redis
            finally:
                if broker is not None:
                    broker.close()
        log(results[-1].row())
    return results


def run_soak(brokers: list[str], tasks: int, baseline_at: int) -> list[harness.Result]:
    results = []
    for name in brokers:
        if not all(private.reachable(url) for url in harness.shared_servers(name)):
            log(f"soak on {name}: skipped, its server is not reachable")
            continue
        with tempfile.TemporaryDirectory(prefix="pq-chaos-") as folder:
            setup = harness.setup_for(name, Path(folder))
            try:
                result, samples = scenarios.soak(setup, Path(folder), tasks, baseline_at, timeout=3600)
            finally:
                if name != "sqlite":
                    setup.drop()
        growth = scenarios.rss_growth(samples, baseline_at)
        if growth > 0.10:
            result.notes += " OVER THE 10% BOUND"
        log(result.row())
        log("RSS samples (tasks run, MiB): " + ", ".join(f"{done}: {rss / 2**20:.1f}" for done, rss in samples))
        results.append(result)
    return results


def run_checks() -> tuple[bool, str]:
    """The hostile-message, signing and credential tests, and the fuzzing with the ``chaos`` profile."""
    tests = ["test_hostile_messages.py", "test_signing.py", "test_credentials.py", "test_message_fuzz.py"]
    env = {**os.environ, "HYPOTHESIS_PROFILE": "chaos"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1800",
                           *(f"tests/reliability/{name}" for name in tests)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    log(done.stdout[-3000:] if done.returncode else summary)
    return done.returncode == 0, f"{summary} ({time.monotonic() - started:.0f} s)"


def machine() -> str:
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} [all]")
    parser.add_argument("--kill-tasks", type=int, default=10_000)
    parser.add_argument("--outage-tasks", type=int, default=10_000)
    parser.add_argument("--soak-tasks", type=int, default=100_000)
    parser.add_argument("--soak-baseline", type=int, default=10_000, help="tasks run before the RSS baseline")
    parser.add_argument("--brokers", help="comma-separated subset of sqlite,redis,amqp+sqlite,amqp+redis")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")

    def chosen(default: tuple[str, ...]) -> list[str]:
        return [b for b in default if not args.brokers or b in args.brokers.split(",")]

    runs: dict[str, Callable[[], list[harness.Result]]] = {
        "killed-workers": lambda: run_killed_workers(chosen(KILL_BROKERS), args.kill_tasks),
        "broker-outage": lambda: run_broker_outage(chosen(OUTAGE_BROKERS), args.outage_tasks),
        "soak": lambda: run_soak(chosen(SOAK_BROKERS), args.soak_tasks, args.soak_baseline),
    }
    log(f"pq chaos runs on {machine()}")
    results: list[harness.Result] = []
    checks_ok, checks = True, ""
    for scenario in args.scenarios or SCENARIOS:
        if scenario == "checks":
            checks_ok, checks = run_checks()
        else:
            results += runs[scenario]()
    table = "\n".join([HEADER, *(result.row() for result in results)])
    text = f"{table}\n\nMachine: {machine()}.\n" + (f"\nHostile messages, signing, credentials, fuzzing: {checks}\n"
                                                    if checks else "")
    print(text)
    if args.out:
        args.out.write_text(text)
    failed = [r for r in results if r.lost or r.stuck or "OVER" in r.notes or "EXITED" in r.notes]
    return 1 if failed or not checks_ok else 0


if __name__ == "__main__":
    sys.exit(main())
