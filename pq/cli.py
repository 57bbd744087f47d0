"""The ``pq`` command: look at and operate a running cluster from a shell.

It finds the application as ``manage.py`` does (``--app module:callable``,
``manage:app`` from the current directory by default), applies the
``--data-store`` and other overrides, and talks to the broker through the
public api, so it works from any machine that reaches the broker. Tables are
for people, ``--json`` is for scripts; errors are one line on stderr with
what to do, and exit 1. Progress of long operations goes to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from typing import Any, Iterable, Sequence

from .app import PulsarQueue
from .brokers import redact_url
from .config import SETTINGS_BY_NAME
from .exceptions import ImproperlyConfigured, PQError, TaskNotAvailable
from .taskapi import RESERVED
from .tasks import SUCCESS, Task

OVERRIDES = ("data_store", "message_broker", "namespace", "message_serializer", "secret",
             "task_queues", "task_paths", "name")
CONNECT_TIMEOUT = 15.0
BATCH = 200  # dead letters retried or purged per round trip
MIB = 1024 * 1024


class CliError(Exception):
    """A failure the user can fix: printed as one line, exit 1."""


# output -------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns; numbers right-aligned."""
    rows = [["-" if cell is None else cell for cell in row] for row in rows]
    numeric = [
        any(isinstance(row[i], (int, float)) for row in rows)
        and all(isinstance(row[i], (int, float)) or row[i] == "-" for row in rows)
        for i in range(len(headers))
    ]
    cells = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def mib(value: int | None) -> str | None:
    return None if value is None else f"{value / MIB:.1f} MiB"


def stamp(when: float | None) -> str | None:
    return None if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def progress(label: str, done: int, total: int) -> None:
    """One progress line on stderr, redrawn in place on a terminal."""
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    print(f"{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)


# the application ----------------------------------------------------------------------------
def load_app(path: str, overrides: dict[str, str]) -> PulsarQueue:
    """The application of ``module:callable`` (the callable returns a PulsarQueue), with overrides."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise CliError(f"bad --app {path!r}: use module:callable, as manage:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"cannot import {module_name!r} (from --app {path}) in {os.getcwd()}: run pq in the "
                           "directory of your manage.py, or pass --app module:callable") from None
        raise CliError(f"importing {module_name!r} failed: {exc}") from None
    except PQError:
        raise
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target = getattr(module, attr, None)
    if target is None:
        raise CliError(f"{module_name!r} has no {attr!r}; --app takes module:callable returning a PulsarQueue")
    app = target if isinstance(target, PulsarQueue) else target() if callable(target) else None
    if not isinstance(app, PulsarQueue):
        raise CliError(f"{path} is not a PulsarQueue nor returns one")
    for name, value in overrides.items():
        app.cfg.set(name, value)
    return app


async def connect(app: PulsarQueue) -> Any:
    api = app.api()
    try:
        await asyncio.wait_for(api.start(), CONNECT_TIMEOUT)
    except ImproperlyConfigured:
        raise
    except Exception as exc:
        reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
        raise CliError(f"cannot reach the broker {redact_url(app.cfg.broker_url)}: {reason}; check --data-store "
                       "and --message-broker (or PQ_DATA_STORE) and that the broker is running") from None
    return api


# commands ----------------------------------------------------------------------------------
async def cmd_status(api: Any, args: argparse.Namespace) -> int:
    stats = await api.tasks.stats(wait=args.wait)
    servers, consumers = stats["servers"], stats["consumers"]
    lines = [
        f"app {stats['app']}, namespace {stats['namespace']}",
        f"broker      {stats['broker']}",
        f"data store  {stats['data_store']}",
        f"{len(servers)} server(s), {len(consumers)} consumer(s) alive",
        "",
        table(["QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "DONE/MIN", "FAILED/MIN"], [
            [q["name"], q["ready"], q["delayed"], q["inflight"], q["dead"], q["done_last_minute"],
             q["failed_last_minute"]] for q in stats["queues"]
        ]),
    ]
    if servers:
        headers = ["SERVER", "HOST", "PID", "UPTIME", "CONSUMERS", "TASKS RUN", "IN FLIGHT", "DASHBOARD"]
        lines += ["", table(headers, [
            [s["node"], s["host"], s["pid"], duration(s["time"] - s["started"]),
             sum(1 for a in s["actors"] if a["kind"] == "consumer"),
             sum(a.get("processed") or 0 for a in s["actors"]), sum(a.get("inflight") or 0 for a in s["actors"]),
             s.get("dashboard")] for s in servers
        ])]
    else:
        lines += ["", "no server reported: start one with `python manage.py` (or `pq serve`) on this broker"]
    emit(args, stats, "\n".join(lines))
    return 0


async def cmd_workers(api: Any, args: argparse.Namespace) -> int:
    stats = await api.tasks.stats(wait=args.wait)
    actors = [{"server": s["node"], **a} for s in stats["servers"] for a in s["actors"]]
    headers = ["SERVER", "ACTOR", "KIND", "PID", "STATE", "CPU%", "MEMORY", "FILES", "TASKS RUN", "IN FLIGHT", "UPTIME"]
    text = table(headers, [
        [a["server"], a["name"], a["kind"], a["pid"], a.get("state"), a.get("cpu_percent"), mib(a.get("rss")),
         a.get("open_files"), a.get("processed"), a.get("inflight"), duration(a.get("uptime"))] for a in actors
    ]) if actors else "no server reported: start one with `python manage.py` (or `pq serve`) on this broker"
    emit(args, actors, text)
    return 0


def parse_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses (3, true, [1,2], "x"), else a string."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"job arguments are key=value pairs, got {pair!r}")
        if key in RESERVED:
            raise CliError(f"{key!r} is an option of pq queue, not a job argument: use --{key.replace('_', '-')}")
        try:
            kwargs[key] = json.loads(text)
        except ValueError:
            kwargs[key] = text
    return kwargs


def task_data(task: Task) -> dict[str, Any]:
    return {**task.to_dict(), "status": task.status_string}


async def cmd_queue(api: Any, args: argparse.Namespace) -> int:
    kwargs = parse_kwargs(args.kwargs)
    try:
        future = api.tasks.queue(args.job, callback=args.wait, queue=args.queue, delay=args.delay, **kwargs)
    except TaskNotAvailable as exc:
        raise CliError(f"{exc}; `pq jobs` lists them") from None
    if not args.wait:
        task = await future
        emit(args, task_data(task), f"{task.id} {task.status_string} on queue {task.queue}")
        return 0
    try:
        task = await asyncio.wait_for(future, args.timeout)
    except asyncio.TimeoutError:
        raise CliError(f"task {future.task_id} not done after {args.timeout} s; "
                       f"see it later with `pq inspect {future.task_id}`") from None
    text = f"{task.id} {task.status_string}"
    text += f" result={json.dumps(task.result, default=repr)}" if task.status == SUCCESS else f" {task.exception}"
    emit(args, task_data(task), text)
    return 0 if task.status == SUCCESS else 1


async def cmd_inspect(api: Any, args: argparse.Namespace) -> int:
    task = await api.tasks.get_task(args.task_id)
    if task is None:
        raise CliError(f"no task {args.task_id!r}: unknown, or its record expired (result_ttl)")
    rows = [
        ["id", task.id], ["job", task.name], ["queue", task.queue], ["status", task.status_string],
        ["arguments", json.dumps(task.kwargs, default=repr)], ["queued", stamp(task.time_queued)],
        ["eta", stamp(task.eta)], ["started", stamp(task.time_started)], ["ended", stamp(task.time_ended)],
        ["took", None if task.elapsed is None else f"{task.elapsed:.3f} s"], ["worker", task.worker],
        ["retries", str(task.retries)], ["attempts", str(task.attempts)], ["timeout", task.timeout],
    ]
    if task.status == SUCCESS:
        rows.append(["result", json.dumps(task.result, default=repr)])
    elif task.exception:
        rows.append(["error", task.exception])
    text = table(["FIELD", "VALUE"], rows)
    if task.stacktrace:
        text += "\n\n" + task.stacktrace.rstrip()
    emit(args, task_data(task), text)
    return 0


async def cmd_jobs(api: Any, args: argparse.Namespace) -> int:
    jobs = api.tasks.job_list()
    emit(args, dict(jobs), table(["JOB", "TYPE", "CONCURRENCY", "QUEUE", "TIMEOUT", "MAX RETRIES"], [
        [name, info["type"], info["concurrency"], info["default_queue"], info["timeout"], info["max_retries"]]
        for name, info in jobs
    ]) if jobs else "no jobs: check task_paths")
    return 0


async def dead_letter_ids(api: Any, args: argparse.Namespace) -> list[str]:
    if args.ids and args.all:
        raise CliError("give dead letter ids or --all, not both")
    if args.ids:
        return list(dict.fromkeys(args.ids))
    if not args.all:
        raise CliError(f"give the ids of the dead letters to {args.action}, or --all")
    return [letter.id for letter, _ in await api.tasks.dead_letters(args.queue, 10_000_000)]


async def cmd_dead_letters(api: Any, args: argparse.Namespace) -> int:
    if args.action == "list":
        letters = await api.tasks.dead_letters(args.queue, args.limit)
        data = [{"id": letter.id, "queue": letter.queue, "job": task.name if task else None,
                 "time": letter.time, "reason": letter.reason, "task": task_data(task) if task else None}
                for letter, task in letters]
        text = table(["ID", "QUEUE", "JOB", "TIME", "REASON"], [
            [d["id"], d["queue"], d["job"], stamp(d["time"]), (d["reason"] or "").partition("\n")[0][:80]]
            for d in data
        ]) if data else "no dead letters"
        emit(args, data, text)
        return 0
    ids = await dead_letter_ids(api, args)
    run = api.tasks.retry_dead_letters if args.action == "retry" else api.tasks.purge_dead_letters
    label = "retried" if args.action == "retry" else "purged"
    done = 0
    for start in range(0, len(ids), BATCH):
        done += await run(ids[start:start + BATCH])
        progress(f"{label} dead letters", min(start + BATCH, len(ids)), len(ids))
    emit(args, {label: done, "asked": len(ids)}, f"{label} {done} dead letter(s)")
    if done < len(ids) and args.ids:
        print(f"pq: {len(ids) - done} of the ids given are not dead letters (see `pq dead-letters list`)",
              file=sys.stderr)
        return 1
    return 0


async def cmd_purge(api: Any, args: argparse.Namespace) -> int:
    waiting = (await api.tasks.sizes([args.queue]))[args.queue]
    total = waiting.ready + waiting.delayed
    print(f"purging {total} waiting task(s) from queue {args.queue!r}...", file=sys.stderr, flush=True)
    purged = await api.tasks.purge(args.queue)
    emit(args, {"queue": args.queue, "purged": purged}, f"purged {purged} task(s) from queue {args.queue!r}")
    return 0


COMMANDS = {
    "status": cmd_status, "workers": cmd_workers, "queue": cmd_queue, "inspect": cmd_inspect,
    "jobs": cmd_jobs, "dead-letters": cmd_dead_letters, "purge": cmd_purge,
}


# the command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--app", help="module:callable returning the PulsarQueue [default manage:app]")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    for name in OVERRIDES:
        setting = SETTINGS_BY_NAME[name]
        common.add_argument(setting.flag, dest=name, metavar=name.upper(),
                            help=f"{setting.help} [env {setting.env}]")
    parser = argparse.ArgumentParser(prog="pq", parents=[common], description="Look at and operate a pq cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in (("status", "queues, throughput and servers"),
                            ("workers", "every actor and its figures")):
        cmd = sub.add_parser(name, parents=[common], help=help_text)
        cmd.add_argument("--wait", type=float, default=1.5, help="seconds to wait for the servers' reports")
    cmd = sub.add_parser("queue", parents=[common], help="queue a task: pq queue JOB key=value ...")
    cmd.add_argument("job")
    cmd.add_argument("kwargs", nargs="*", metavar="key=value", help="job arguments; values are JSON or strings")
    cmd.add_argument("--wait", action="store_true", help="wait until the task is done; exit 1 unless SUCCESS")
    cmd.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits [60]")
    cmd.add_argument("--queue", help="queue to put it on [the job's, else the default queue]")
    cmd.add_argument("--delay", type=float, help="seconds before it may run")
    cmd = sub.add_parser("inspect", parents=[common], help="a task's record: pq inspect TASK_ID")
    cmd.add_argument("task_id")
    sub.add_parser("jobs", parents=[common], help="the jobs this application knows")
    cmd = sub.add_parser("dead-letters", parents=[common], help="list, retry or purge dead letters")
    cmd.add_argument("action", choices=("list", "retry", "purge"))
    cmd.add_argument("ids", nargs="*", help="dead letter (task) ids; or --all")
    cmd.add_argument("--all", action="store_true", help="every dead letter (of --queue)")
    cmd.add_argument("--queue", help="only this queue's dead letters")
    cmd.add_argument("--limit", type=int, default=100, help="how many to list [100]")
    cmd = sub.add_parser("purge", parents=[common], help="delete the waiting tasks of a queue")
    cmd.add_argument("queue")
    sub.add_parser("serve", add_help=False,
                   help="run a server as python manage.py does: pq serve -w 4 (--help lists its settings)")
    return parser


async def run(app: PulsarQueue, args: argparse.Namespace) -> int:
    api = await connect(app)
    try:
        return await COMMANDS[args.command](api, args)
    finally:
        try:
            await asyncio.wait_for(api.close(), 5)
        except Exception:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, server_args = parser.parse_known_args(argv)
    if server_args and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(server_args)}")
    overrides = {name: getattr(args, name) for name in OVERRIDES if hasattr(args, name)}
    args.json = getattr(args, "json", False)
    try:
        app = load_app(getattr(args, "app", "manage:app"), {} if args.command == "serve" else overrides)
        if args.command == "serve":
            argv = [arg for name, value in overrides.items() for arg in (SETTINGS_BY_NAME[name].flag, value)]
            app.start(argv + server_args)
        logging.basicConfig(format="pq: %(name)s: %(message)s", level=logging.ERROR)
        return asyncio.run(run(app, args))
    except (CliError, PQError) as exc:
        print(f"pq: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("pq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"pq: error: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
