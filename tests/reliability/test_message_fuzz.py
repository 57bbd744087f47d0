"""Property-based fuzzing of the message decoder a consumer runs on every message it takes.

Whatever bytes a broker hands over, ``MessageCodec.decode`` + ``Task.from_dict``
either give a Task the worker can handle (and record: it re-encodes) or
raise a ``PQError``, which the worker turns into a dead letter.  Any other
exception would send the message round the queue for ever.

``HYPOTHESIS_PROFILE=chaos`` (``make chaos``) runs many more examples.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pq.exceptions import PQError
from pq.serializers import JsonCodec, MessageCodec, MsgpackCodec
from pq.tasks import FIELDS, STATUS_STRINGS, Task

settings.register_profile("ci", max_examples=250, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("chaos", max_examples=5000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SECRET = "fuzz-secret"
CODECS = {
    "json": MessageCodec(JsonCodec(), max_size=64 * 1024),
    "msgpack": MessageCodec(MsgpackCodec(), max_size=64 * 1024),
    "json+secret": MessageCodec(JsonCodec(), SECRET, 64 * 1024),
    "msgpack+secret": MessageCodec(MsgpackCodec(), SECRET, 64 * 1024),
}

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "default", "chaos.run", "i1", "addition"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
msgpack_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                   | st.binary(max_size=20))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5) | st.binary(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def field_values(values: st.SearchStrategy) -> dict[str, st.SearchStrategy]:
    """For each wire field: plausible values, wrong-typed ones and anything."""
    plausible: dict[str, st.SearchStrategy] = {
        "id": st.sampled_from(["i1", "", "x" * 40]), "name": st.sampled_from(["chaos.run", "no.such", ""]),
        "status": st.sampled_from([*STATUS_STRINGS, 0, 7, -1, 1.0, True]),
        "kwargs": st.dictionaries(st.text(max_size=6), values, max_size=3),
        "meta": st.dictionaries(st.sampled_from(["max_retries", "retry_delay", "max_concurrency", "from_task", "x"]),
                                values, max_size=3),
        "retries": st.integers(-2, 3), "attempts": st.integers(-2, 3),
    }
    return {name: plausible.get(name, values) | values for name in FIELDS}


def task_shaped(values: st.SearchStrategy) -> st.SearchStrategy:
    """Maps of wire fields; half of them with a valid id and name, so the other checks are reached."""
    fields = field_values(values)
    rest = {name: strategy for name, strategy in fields.items() if name not in ("id", "name")}
    return st.fixed_dictionaries({}, optional=fields) | st.fixed_dictionaries(
        {"id": st.just("i1"), "name": st.just("chaos.run")}, optional=rest)


def sign(body: bytes) -> bytes:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest().encode() + b":" + body


def check(codec: MessageCodec, payload: bytes) -> None:
    """Decode as a consumer does: a usable Task, or a PQError; never anything else."""
    try:
        task = Task.from_dict(codec.decode(payload))
    except PQError:
        return
    assert isinstance(task.id, str) and task.id and isinstance(task.name, str) and task.name
    assert isinstance(task.kwargs, dict) and all(isinstance(key, str) for key in task.kwargs)
    assert isinstance(task.meta, dict) and task.status in STATUS_STRINGS
    assert isinstance(task.retries, int) and task.retries >= 0
    assert task.queue is None or isinstance(task.queue, str)
    unlimited = MessageCodec(codec.codec, SECRET if codec.key else None)
    again = Task.from_dict(unlimited.decode(unlimited.encode(task.to_dict())))  # the worker records it
    assert again.id == task.id


@given(payload=st.binary(max_size=512))
def test_any_bytes(payload: bytes) -> None:
    for codec in CODECS.values():
        check(codec, payload)


@given(body=st.binary(max_size=512))
def test_any_bytes_with_a_valid_signature(body: bytes) -> None:
    check(CODECS["json+secret"], sign(body))
    check(CODECS["msgpack+secret"], sign(body))


@given(data=json_values | task_shaped(json_values))
def test_any_json(data: Any) -> None:
    payload = json.dumps(data).encode()  # NaN and Infinity included, as a hostile producer may send them
    check(CODECS["json"], payload)
    check(CODECS["json+secret"], sign(payload))


@given(data=msgpack_values | task_shaped(msgpack_values))
def test_any_msgpack(data: Any) -> None:
    payload = msgpack.packb(data, use_bin_type=True)
    check(CODECS["msgpack"], payload)
    check(CODECS["msgpack+secret"], sign(payload))


@given(data=task_shaped(json_values), cut=st.integers(0, 400))
def test_truncated_and_flipped(data: Any, cut: int) -> None:
    payload = json.dumps(data).encode()
    check(CODECS["json"], payload[:cut])
    if payload:
        flipped = bytearray(payload)
        flipped[cut % len(payload)] ^= 0x55
        check(CODECS["json"], bytes(flipped))


def test_messages_fuzzing_found_are_refused() -> None:
    """Messages that got past the decoder before it was fixed: each was a poison message for the worker."""
    codec = CODECS["json"]
    found = [
        {"id": "i1", "name": "chaos.run", "status": [1]},  # unhashable status: TypeError
        {"id": "i1", "name": "chaos.run", "kwargs": {"n": float("nan")}},  # cannot be re-encoded to be recorded
        {"id": "i1", "name": "chaos.run", "timeout": float("inf")},
        {"id": "i1", "name": "chaos.run", "meta": {"max_retries": "3"}},  # int < str in the worker
        {"id": "i1", "name": "chaos.run", "meta": {"max_concurrency": "x"}},  # int('x') in the worker
        {"id": "i1", "name": "chaos.run", "meta": 0},  # a falsy meta that is not a map
        {"id": "i1", "name": "chaos.run", "queue": {"a": 1}},  # a queue that is not a name
    ]
    for data in found:
        with pytest.raises(PQError):
            Task.from_dict(codec.decode(json.dumps(data).encode()))
    with pytest.raises(PQError):
        codec.decode(b"[" * 100_000)  # too deep: a decoding error like any other


texts = st.text(st.characters(blacklist_categories=()), max_size=8)  # lone surrogates included
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(texts | st.integers(-3, 3) | st.booleans(), inner, max_size=4),
    max_leaves=12,
)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (PQError, TypeError, ValueError) as exc:
        return "error", type(exc).__name__ if not isinstance(exc, PQError) else "refused"


@given(data=any_json)
def test_the_json_codec_writes_and_reads_what_the_stdlib_does(data: Any) -> None:
    """msgspec's fast path and the stdlib agree: same value back, same refusals (NaN, infinities)."""
    codec = JsonCodec()
    ours = outcome(lambda: json.loads(codec.encode({"v": data})))
    theirs = outcome(lambda: json.loads(json.dumps({"v": data}, allow_nan=False)))
    assert (ours[0], repr(ours[1])) == (theirs[0], repr(theirs[1])) or (ours[0], theirs[0]) == ("error", "error")
    payload = json.dumps({"v": data}).encode()  # NaN and Infinity written, as a hostile producer may
    strict = json.JSONDecoder(parse_constant=lambda name: float("x"))
    read, expected = outcome(lambda: codec.decode(payload)), outcome(lambda: strict.decode(payload.decode()))
    if expected[0] == "ok" and any(not math.isfinite(x) for x in floats(expected[1])):
        expected = ("error", None)  # 1e400: a float out of range, refused as NaN is
    assert read[0] == expected[0] and (read[0] == "error" or repr(read[1]) == repr(expected[1]))


def floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [x for item in value.values() for x in floats(item)]
    if isinstance(value, list):
        return [x for item in value for x in floats(item)]
    return []


def test_the_json_codec_refuses_what_json_cannot_hold() -> None:
    codec = JsonCodec()
    loop: list[Any] = []
    loop.append(loop)
    for bad in (object(), {1, 2}, b"bytes", float("nan"), float("inf"), loop):
        with pytest.raises(PQError, match="cannot encode as JSON"):
            codec.encode({"v": bad})
    assert json.loads(codec.encode({"v": {1: "a", None: 2}})) == {"v": {"1": "a", "null": 2}}
    assert codec.decode(codec.encode({"v": 2**100})) == {"v": 2**100}
