"""How much of a RabbitMQ consumer's CPU is its client's: the same deliveries, three readers.

    .venv/bin/python benchmarks/amqp_reader.py [--messages 30000] [--rounds 2]

Fills a queue of its own on ``BENCH_AMQP_URL`` with pq-sized messages, then
consumes them (prefetch 20, a ``basic.ack multiple`` every 5) with aio-pika,
with pq's own consuming connection (``pq.brokers.amqp_wire``), and with a
bare reader: an ``asyncio.Protocol`` that parses frames with pamqp straight
from its receive buffer, without a task or a queue per frame.  It prints
messages/s and µs of this process's CPU per delivery for each.  The bare
reader is the floor, not a client: no TLS, heartbeats, reconnects or errors.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import aio_pika
from pamqp import body as amqp_body
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp import heartbeat as amqp_heartbeat

URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BODY = (b'{"id":"i' + b"0" * 32 + b'","name":"noop","queue":"bench","kwargs":{},"status":6,'
        b'"time_queued":1795351713.5799828}')
PREFETCH, ACK_EVERY = 20, 5


async def fill(queue: str, count: int) -> None:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=False)
    await channel.declare_queue(queue)
    for _ in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(BODY, message_id="x", headers={"x-pq-deliveries": 1}), routing_key=queue)
    await connection.close()


class BareReader(asyncio.Protocol):
    """Frames parsed from one buffer; each delivery's method, header and body joined here."""

    def __init__(self, count: int, done: asyncio.Future) -> None:
        self.count, self.done = count, done
        self.buffer = bytearray()
        self.replies: list[asyncio.Future] = []
        self.deliver: Any = None
        self.got = self.acked = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, channel: int, frame: Any) -> None:
        self.transport.write(amqp_frame.marshal(frame, channel))

    async def call(self, channel: int, frame: Any) -> Any:
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        if frame is not None:
            self.send(channel, frame)
        return await reply

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 7:
            size = int.from_bytes(self.buffer[3:7], "big") + 8
            if len(self.buffer) < size:
                return
            _, _, frame = amqp_frame.unmarshal(bytes(self.buffer[:size]))
            del self.buffer[:size]
            self.on_frame(frame)

    def on_frame(self, frame: Any) -> None:
        if isinstance(frame, spec.Basic.Deliver):
            self.deliver = frame
        elif isinstance(frame, amqp_header.ContentHeader):
            _ = frame.properties.message_id, frame.properties.headers  # what pq reads of a delivery
        elif isinstance(frame, amqp_body.ContentBody):
            self.delivered(self.deliver.delivery_tag)
        elif isinstance(frame, amqp_heartbeat.Heartbeat):
            self.send(0, amqp_heartbeat.Heartbeat())
        elif self.replies:
            self.replies.pop(0).set_result(frame)

    def delivered(self, tag: int) -> None:
        self.got += 1
        if self.got - self.acked >= ACK_EVERY or self.got == self.count:
            self.send(1, spec.Basic.Ack(tag, multiple=True))
            self.acked = self.got
        if self.got == self.count:
            self.done.set_result(None)


async def bare(queue: str, count: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    url = aio_pika.connection.make_url(URL)
    transport, reader = await loop.create_connection(lambda: BareReader(count, done), url.host, url.port or 5672)
    try:
        start = reader.call(0, None)
        transport.write(b"AMQP\x00\x00\x09\x01")
        await start
        tune = await reader.call(0, spec.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response=f"\0{url.user}\0{url.password}", locale="en_US"))
        reader.send(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        await reader.call(0, spec.Connection.Open(virtual_host=url.path[1:] or "/"))
        await reader.call(1, spec.Channel.Open())
        await reader.call(1, spec.Basic.Qos(prefetch_count=PREFETCH))
        cpu, wall = time.process_time(), time.perf_counter()
        await reader.call(1, spec.Basic.Consume(queue=queue, consumer_tag="bare"))
        await done
        return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e6
    finally:
        transport.close()


async def pika(queue: str, count: int) -> tuple[float, float]:
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        done = asyncio.get_running_loop().create_future()
        got = 0

        async def on_message(message: Any) -> None:
            nonlocal got
            got += 1
            seen = got  # later messages may count on while this one's ack is awaited
            if seen % ACK_EVERY == 0 or seen == count:
                await message.ack(multiple=True)
            if seen == count:
                done.set_result(None)

        cpu, wall = time.process_time(), time.perf_counter()
        await (await channel.get_queue(queue)).consume(on_message)
        await done
        return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e6
    finally:
        await connection.close()


async def wire(queue: str, count: int) -> tuple[float, float]:
    from pq.brokers import amqp_wire

    connection = await amqp_wire.connect(URL, "pq-bench-reader")
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)
        done = asyncio.get_running_loop().create_future()
        got = 0

        def on_message(message: amqp_wire.Message) -> None:
            nonlocal got
            got += 1
            _ = message.properties.message_id, message.properties.headers  # what pq reads of a delivery
            if got % ACK_EVERY == 0 or got == count:
                channel.settle(80, message.delivery_tag, True)
            if got == count:
                done.set_result(None)

        cpu, wall = time.process_time(), time.perf_counter()
        await channel.basic_consume(queue, on_message, consumer_tag="wire")
        await done
        return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e6
    finally:
        await connection.close()


async def main(count: int, rounds: int) -> None:
    for _ in range(rounds):
        for name, consume in (("aio-pika", pika), ("amqp_wire", wire), ("bare reader", bare)):
            queue = f"pq-bench-reader-{uuid.uuid4().hex[:8]}"
            await fill(queue, count)
            try:
                rate, cpu = await consume(queue, count)
            finally:
                connection = await aio_pika.connect(URL)
                await (await connection.channel()).queue_delete(queue)
                await connection.close()
            print(f"{name:12} {rate:>10,.0f} deliveries/s {cpu:6.1f} µs of CPU per delivery", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from pq.actors.actor import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main(args.messages, args.rounds))
