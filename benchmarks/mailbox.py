"""Mailbox round trips: a consumer asks the monitor ``ping`` through the arbiter.

    .venv/bin/python benchmarks/mailbox.py [--messages 20000] [--concurrency 1 16 64]

Starts a real server (one consumer, a scheduler, a monitor) in a subprocess,
has its consumer send ``--messages`` requests to the monitor with
``--concurrency`` of them in flight, and prints messages per second and
latency percentiles. For comparison it also times a client of the control
socket pinging the consumer (client -> arbiter -> consumer).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from pq.actors import Arbiter, Client, ConsumerActor, command
from pq.app import PulsarQueue
from pq.config import Config
from pq.logs import configure_logging


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"messages": len(latencies), "seconds": seconds, "per_second": len(latencies) / seconds,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000}


async def round_trips(send: Any, messages: int, concurrency: int) -> dict[str, float]:
    """Time ``messages`` awaits of ``send()`` with ``concurrency`` of them in flight."""
    latencies: list[float] = []
    per_sender = messages // concurrency

    async def sender() -> None:
        for _ in range(per_sender):
            start = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - start)


class BenchConsumer(ConsumerActor):
    @command
    async def bench(self, target: str, messages: int, concurrency: int) -> dict[str, float]:
        """Ping ``target`` through the arbiter and report the figures."""
        return await round_trips(lambda: self.send(target, "ping", timeout=30), messages, concurrency)


def serve(argv: list[str]) -> None:
    app = PulsarQueue(data_store="memory://")
    app.cfg = Config(argv=argv, data_store="memory://")
    configure_logging(app.cfg.log_level)
    sys.exit(Arbiter(app, kinds={"consumer": BenchConsumer}).run())


async def wait_ready(control: str, timeout: float = 30.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = await Client.connect(control)
            info = await client.send("arbiter", "info")
            if len(info["actors"]) == 3 and all(a["state"] == "running" for a in info["actors"]):
                return client
            await client.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def show(label: str, figures: dict[str, float]) -> None:
    print(f"{label:<44} {figures['messages']:>7} msgs {figures['per_second']:>9,.0f} msg/s  "
          f"p50 {figures['p50_ms']:6.3f} ms  p99 {figures['p99_ms']:6.3f} ms  "
          f"max {figures['max_ms']:7.3f} ms")


async def drive(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "pq.sock")
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "-w", "1", "--control", control, "--log-level", "warning"],
            cwd=tmp,
        )
        try:
            client = await wait_ready(control)
            await client.send("consumer-1", "bench", "monitor", 1000, 8, timeout=120)  # warm up
            for concurrency in args.concurrency:
                figures = await client.send("consumer-1", "bench", "monitor", args.messages, concurrency,
                                            timeout=600)
                show(f"consumer -> arbiter -> monitor, {concurrency} in flight", figures)
            for concurrency in args.concurrency:
                figures = await round_trips(lambda: client.send("consumer-1", "ping", timeout=30),
                                            args.messages, concurrency)
                show(f"client -> arbiter -> consumer, {concurrency} in flight", figures)
            await client.send("arbiter", "stop")
            await client.close()
            server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
