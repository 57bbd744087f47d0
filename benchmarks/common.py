"""What every suite shares: processes started and stopped by pid, a private
redis-server, polling a completion signal, the driver subprocess, percentiles
and tables.

Runs in pq's virtualenv; peers run in ``benchmarks/.venv-peers`` and are only
ever reached through subprocesses (their workers and ``driver.py``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = HERE / ".venv-peers"
PEERS_BIN = PEERS_VENV / "bin"
PQ_PYTHON = sys.executable
LOG_DIR = Path(tempfile.gettempdir()) / "pq-bench-logs"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# processes ---------------------------------------------------------------------------
@dataclass
class Procs:
    """Processes one system runs for a measurement; stopped by pid, never by name."""

    name: str
    popens: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path = HERE) -> subprocess.Popen:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        logfile = LOG_DIR / f"{self.name}-{len(self.popens)}.log"
        with open(logfile, "ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.popens.append(popen)
        return popen

    def pids(self) -> list[int]:
        """Every pid of the tree: the started processes and their descendants."""
        found: list[int] = []
        for popen in self.popens:
            if popen.poll() is not None:
                continue
            found.append(popen.pid)
            try:
                found += [child.pid for child in psutil.Process(popen.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found

    def alive(self) -> bool:
        return all(popen.poll() is None for popen in self.popens)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the started processes (each stops its own children), SIGKILL the tree if late."""
        tree = self.pids()
        for popen in self.popens:
            if popen.poll() is None:
                try:
                    popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for popen in self.popens:
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:
            try:
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        for popen in self.popens:
            try:
                popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.popens.clear()


class RedisServer:
    """A redis-server of the benchmark's own on a free port: the shared Redis is never touched."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pq-bench-redis-"))
        self.procs = Procs("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.procs.start([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
                         env=dict(os.environ))
        wait_for(self.ping, 10, what="redis-server to answer")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def flush(self) -> None:
        """Empties this private server only (its port is never the shared 6379)."""
        assert self.port != 6379
        self.client().flushall()

    def stop(self) -> None:
        self.procs.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# the driver ----------------------------------------------------------------------------
def driver(system: str, action: str, env: dict[str, str], timeout: float = 300, **options: Any) -> dict[str, Any]:
    """Run ``driver.py SYSTEM ACTION`` in the system's virtualenv; its last stdout line is JSON."""
    python = PQ_PYTHON if system == "pq" else str(PEERS_BIN / "python")
    argv = [python, str(HERE / "driver.py"), system, action]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        logfile = LOG_DIR / f"driver-{system}-{action}-{int(time.time())}.log"
        logfile.write_text(done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"{lines[-1] if lines else 'exit ' + str(done.returncode)} (traceback in {logfile})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def base_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PQ_", "BENCH_", "VIRTUAL_ENV"))}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{HERE / 'peers'}{os.pathsep}{ROOT}"})
    env.update(extra)
    return env


def peers_ready() -> bool:
    return (PEERS_BIN / "python").exists()


def ensure_peers_venv(requirements: Path = HERE / "requirements.txt") -> None:
    """Create benchmarks/.venv-peers and install the pinned peers (again only when the pins change)."""
    stamp = PEERS_VENV / ".installed"
    wanted = requirements.read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    python = shutil.which("python3.11") or sys.executable
    if not (PEERS_BIN / "python").exists():
        log(f"creating {PEERS_VENV}")
        subprocess.run([python, "-m", "venv", str(PEERS_VENV)], check=True)
    log("installing the peers from benchmarks/requirements.txt")
    subprocess.run([str(PEERS_BIN / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PEERS_BIN / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    stamp.write_text(wanted)


# drain measurement -----------------------------------------------------------------------
def drain(progress: Callable[[], int], total: int, timeout: float, procs: Procs | None = None,
          interval: float = 0.005) -> dict[str, float]:
    """Poll ``progress()`` (tasks done) until ``total``.

    Timed from the first task seen done to the last, so process start-up
    (different for every system) is left out of the rate; ``wall`` keeps it.
    """
    launched = time.perf_counter()
    first_t = first_n = None
    deadline = launched + timeout
    done = 0
    while True:
        done = progress()
        now = time.perf_counter()
        if first_t is None and done > 0:
            first_t, first_n = now, done
        if done >= total:
            break
        if now > deadline:
            raise TimeoutError(f"only {done}/{total} done after {timeout} s")
        if procs is not None and not procs.alive():
            raise RuntimeError(f"a worker process of {procs.name} died ({done}/{total} done)")
        time.sleep(interval)
    assert first_t is not None and first_n is not None
    seconds = max(now - first_t, 1e-9)
    return {"tasks": total, "seconds": seconds, "per_second": (total - first_n) / seconds,
            "wall": now - launched, "startup": first_t - launched}


# tables -------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[fmt(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """pq / peer: above 1 pq is faster for a rate, slower for a latency."""
    if not ours or not theirs or ours != ours or theirs != theirs:
        return None
    return ours / theirs
