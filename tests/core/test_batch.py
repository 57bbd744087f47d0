"""pq/batch.py: what callers add in one loop turn is one write; delayed items wait, in order."""
from __future__ import annotations

import asyncio

import pytest

from pq.batch import Batcher


class Recorder:
    """A write that records its batches; ``gate`` holds a write until set, ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, items: list[str]) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(items))


async def test_items_of_one_loop_turn_are_one_write() -> None:
    write = Recorder()
    batcher = Batcher(write)
    await asyncio.gather(*(batcher.add([f"i{n}"]) for n in range(5)))
    assert write.batches == [["i0", "i1", "i2", "i3", "i4"]]


async def test_delayed_items_wait_until_an_item_that_cannot_wait_joins_them() -> None:
    write = Recorder()
    batcher = Batcher(write)
    started = batcher.submit(["started"], delay=10.0)
    await asyncio.sleep(0.05)
    assert not started.done() and write.batches == []
    await batcher.add(["done"])
    assert started.done() and write.batches == [["started", "done"]]


async def test_delayed_items_alone_are_written_after_their_delay() -> None:
    write = Recorder()
    batcher = Batcher(write)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await batcher.submit(["started"], delay=0.05)
    assert loop.time() - began >= 0.04 and write.batches == [["started"]]


async def test_a_batch_is_written_only_after_the_one_before_it() -> None:
    write = Recorder()
    batcher = Batcher(write)
    write.gate.clear()
    first = batcher.submit(["a"])
    await asyncio.sleep(0.01)  # the first write has started and is held
    second = batcher.submit(["b"])
    await asyncio.sleep(0.01)
    assert write.batches == [] and not second.done()
    write.gate.set()
    await asyncio.gather(first, second)
    assert write.batches == [["a"], ["b"]]


async def test_a_failed_write_fails_its_callers_only_and_the_next_batch_goes_on() -> None:
    write = Recorder()
    batcher = Batcher(write)
    write.fail = RuntimeError("store down")
    with pytest.raises(RuntimeError, match="store down"):
        await asyncio.gather(batcher.add(["a"]), batcher.add(["b"]))
    write.fail = None
    await batcher.add(["c"])
    assert write.batches == [["c"]]


async def test_a_full_batch_is_written_at_once() -> None:
    write = Recorder()
    batcher = Batcher(write, max_size=3)
    futures = [batcher.submit([f"i{n}"], delay=10.0) for n in range(4)]
    await asyncio.gather(*futures[:3])
    assert write.batches == [["i0", "i1", "i2"]] and not futures[3].done()
    await batcher.add(["now"])
    assert write.batches == [["i0", "i1", "i2"], ["i3", "now"]]
