"""pq's benchmarks: speed as ratios against peers run side by side, in one run, on this machine.

    .venv/bin/python benchmarks/run.py [sqlite redis amqp mailbox] [--jobs 20000] [--out results.md]

Peers are installed from benchmarks/requirements.txt into benchmarks/.venv-peers
(created here on first use), never into pq's virtualenv.  Each suite starts
every system's worker processes itself (two per system), stops them by pid,
and prints a table of absolute figures and pq / peer ratios.  See README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ensure_peers_venv, log  # noqa: E402

SUITES = ("sqlite", "redis", "amqp", "mailbox")
DEFAULT = ("sqlite", "redis", "amqp")
LOAD = REVISION = ""


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.1f} GiB, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def revision() -> str:
    """The pq commit measured, and whether pq/ had uncommitted changes then."""
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=HERE.parent, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "pq")
    return f"pq {git('rev-parse', '--short', 'HEAD')}" + (" with uncommitted changes in pq/" if dirty else "")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) at the start"


def run_mailbox(args: argparse.Namespace) -> dict[str, Any]:
    """The actor mailbox benchmark (benchmarks/mailbox.py), as it is: no peer to compare with."""
    out = subprocess.run([sys.executable, str(HERE / "mailbox.py")], capture_output=True, text=True, timeout=300)
    return {"suite": "mailbox", "table": "```\n" + (out.stdout or out.stderr).strip() + "\n```",
            "notes": [], "targets": [], "raw": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"of {', '.join(SUITES)} (default: {' '.join(DEFAULT)})")
    parser.add_argument("--jobs", type=int, default=20_000, help="tasks per drain (default 20000)")
    parser.add_argument("--latency", type=int, default=200, help="sequential tasks of a latency run (default 200)")
    parser.add_argument("--sequential", type=int, default=2_000,
                        help="enqueue calls awaited one by one (default 2000)")
    parser.add_argument("--concurrent", type=int, default=3_000,
                        help="enqueue calls timed with --concurrency in flight (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="enqueue calls in flight when enqueueing concurrently (default 32)")
    parser.add_argument("--batch", type=int, default=20_000, help="tasks through a batch enqueue API (default 20000)")
    parser.add_argument("--peers", nargs="*", default=None, help="only these peers (default: all of the suite)")
    parser.add_argument("--out", type=Path, help="also write the tables as markdown to this file")
    parser.add_argument("--json", type=Path, help="also write every raw figure as JSON to this file")
    parser.add_argument("--no-install", action="store_true", help="do not create/update benchmarks/.venv-peers")
    args = parser.parse_args()
    suites = args.suites or list(DEFAULT)
    unknown = [name for name in suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if not args.no_install and any(s != "mailbox" for s in suites):
        ensure_peers_venv()
    global LOAD, REVISION
    LOAD, REVISION = load(), revision()
    started = time.time()
    reports = []
    for name in suites:
        log(f"=== suite {name}")
        if name == "mailbox":
            reports.append(run_mailbox(args))
            continue
        module = __import__(f"suite_{name}")
        reports.append(module.run(args))
        print(render([reports[-1]], header=False), flush=True)
    text = render(reports, header=True, started=started)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, default=str))
    return 0


def render(reports: list[dict[str, Any]], header: bool, started: float | None = None) -> str:
    lines = []
    if header:
        lines += [f"# pq benchmarks, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}", "",
                  f"Machine: {machine()}; {LOAD}.", "", f"Code: {REVISION}.", ""]
    for report in reports:
        lines += [f"## {report['suite']}", "", report["table"], ""]
        lines += [f"- {note}" for note in report["notes"]]
        if report["targets"]:
            lines += ["", "| target | met | measured |", "|---|---|---|"]
            lines += [f"| {name} | {'yes' if ok else 'no'} | {detail} |" for name, ok, detail in report["targets"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
