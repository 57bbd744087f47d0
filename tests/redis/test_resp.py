"""pq's own RESP client (pq/brokers/resp.py): pipelining, errors as values, blocks ended early,
lost and silent servers, credentials, unix sockets."""
from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

from pq.brokers.redis_events import Outage
from pq.brokers.resp import RespClient, pack
from redis_helpers import RedisServer


def client(url: str, retries: int = 0, **options) -> RespClient:
    return RespClient(url, {"socket_timeout": 5, "socket_connect_timeout": 2, **options}, Outage(url), retries)


@pytest.fixture
async def resp(redis_url):
    """A client of the shared server; its test's ``key`` is deleted after."""
    resp = client(redis_url)
    resp.key = f"pqtest-resp-{time.monotonic_ns()}"
    yield resp
    await resp.exchange([("DEL", resp.key)])
    resp.close()


def test_pack_is_the_resp_request_format():
    assert pack([("SET", b"k", 1), ("GET", "k")]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack([("X", 0.5)]) == b"*2\r\n$1\r\nX\r\n$3\r\n0.5\r\n"


@pytest.mark.parametrize("bad", [None, True, object(), ["list"]])
def test_pack_refuses_what_redis_cannot_take(bad):
    with pytest.raises(TypeError, match="use bytes, str, int or float"):
        pack([("SET", "k", bad)])


async def test_commands_of_one_loop_turn_share_one_write_and_get_their_own_replies(resp):
    writes = []
    connection = await resp._shared_connection()
    transport_write = connection._transport.write
    connection._transport.write = lambda data: (writes.append(data), transport_write(data))
    replies = await asyncio.gather(*(resp.exchange([("INCR", resp.key), ("GET", resp.key)]) for _ in range(20)))
    assert replies == [[i, b"%d" % i] for i in range(1, 21)]
    assert len(writes) == 1


async def test_error_replies_are_values_and_lost_scripts_are_noscript(resp):
    wrong, ok, missing = await resp.exchange([("NOSUCHCOMMAND",), ("PING",), ("EVALSHA", "0" * 40, 0)])
    assert isinstance(wrong, ResponseError) and "unknown command" in str(wrong)
    assert ok == b"PONG"
    assert isinstance(missing, NoScriptError)


async def test_a_block_is_ended_after_its_time_and_the_next_command_still_runs(resp):
    started = time.monotonic()
    popped, pong = await resp.blocking([("BLPOP", resp.key, 5), ("PING",)], 0.05)
    assert (popped, pong) == (None, b"PONG")
    assert time.monotonic() - started < 1, "CLIENT UNBLOCK ends the block, not the server's 5 s"
    reused = resp._idle[0]
    waiting = asyncio.ensure_future(resp.blocking([("BLPOP", resp.key, 5), ("ECHO", "after")], 5))
    await asyncio.sleep(0.05)
    await resp.exchange([("RPUSH", resp.key, "x")])
    assert await waiting == [[resp.key.encode(), b"x"], b"after"]
    assert resp._idle == [reused], "a dedicated connection serves one block after another"


async def test_a_cancelled_block_drops_its_connection(resp):
    waiting = asyncio.ensure_future(resp.blocking([("BLPOP", resp.key, 5)], 5))
    await asyncio.sleep(0.05)
    (connection,) = resp._dedicated
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert connection.lost is not None and not resp._idle and not resp._dedicated
    await resp.exchange([("RPUSH", resp.key, "x")])
    assert await resp.exchange([("LPOP", resp.key)]) == [b"x"], "the dropped BLPOP took nothing"


async def test_a_restarted_server_is_reconnected_and_the_call_sent_again(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    resp = client(server.url, retries=8)
    try:
        assert await resp.exchange([("SET", "k", "before")]) == [b"OK"]
        server.kill()
        restarted = asyncio.ensure_future(asyncio.to_thread(lambda: (time.sleep(0.3), server.start())))
        assert await resp.exchange([("GET", "k")]) == [b"before"], "appendonly kept the key"
        await restarted
    finally:
        resp.close()
        server.kill()


async def test_an_unreachable_server_raises_connection_error_once_retries_run_out():
    resp = client("redis://127.0.0.1:1/0", retries=1)
    with pytest.raises((ConnectionError, OSError)):
        await resp.exchange([("PING",)])


async def test_a_server_that_never_answers_times_out():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the handshake, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    resp = client(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no reply within 0.2 s"):
            await resp.exchange([("PING",)])
        assert time.monotonic() - started < 2
    finally:
        resp.close()
        server.close()


async def test_credentials_database_and_unix_socket(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        admin = client(server.url)
        await admin.exchange([("ACL", "SETUSER", "pq", "on", ">secret", "~*", "+@all")])
        admin.close()
        resp = client(f"redis://pq:secret@127.0.0.1:{server.port}/3")
        assert await resp.exchange([("SET", "k", "in 3")]) == [b"OK"]
        resp.close()
        on_unix = client(f"unix://pq:secret@{server.socket_path}?db=3")
        assert await on_unix.exchange([("GET", "k")]) == [b"in 3"]
        on_unix.close()
        refused = client(f"redis://pq:wrong@127.0.0.1:{server.port}/0", retries=8)
        started = time.monotonic()
        with pytest.raises(AuthenticationError):
            await refused.exchange([("PING",)])
        assert time.monotonic() - started < 1, "refused credentials are not retried"
    finally:
        server.kill()


def test_settings_in_the_url_win_over_the_store_defaults():
    from pq.brokers.redis import RedisStore

    from_url = RedisStore("redis://127.0.0.1:6379/0?socket_timeout=2")
    assert from_url.resp.timeout == 2.0 and from_url._max_block == pytest.approx(1.6)
    from_option = RedisStore("redis://127.0.0.1:6379/0", socket_timeout=3)
    assert from_option.resp.timeout == 3 and from_option._max_block == pytest.approx(2.4)
    assert RedisStore("redis://127.0.0.1:6379/0").resp.timeout == 10
