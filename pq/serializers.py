"""Codecs for task messages (json, msgpack, or your own) and HMAC signing.

A codec turns a task dict into bytes and back.  With a ``secret`` every
message is prefixed by the hex HMAC-SHA256 of its payload and a ``:``; a
message whose signature does not match is refused with ``MessageError``.
"""
from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import math
from typing import Any

import msgpack
import msgspec

from .exceptions import ImproperlyConfigured, MessageError, SerializationError


class Codec:
    """Base codec; subclass it (oxalis's TaskCodec) and name it in message_serializer."""

    name = "base"

    def encode(self, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def decode(self, payload: bytes) -> dict[str, Any]:
        raise NotImplementedError


# One stdlib encoder and decoder for every message (json.dumps and json.loads with options
# build new ones per call): the strict path, and the judge of what msgspec's fast path refuses.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_FAST_ENCODE = msgspec.json.Encoder().encode
_FAST_DECODE = msgspec.json.Decoder().decode


def _plain(value: Any) -> bool:
    """Whether ``value`` is made only of what JSON holds as it is: str, int, finite float,
    bool, None, lists, tuples and str-keyed dicts.  msgspec would also write datetimes,
    sets, bytes, UUIDs... (and NaN as null) where the stdlib refuses them: those go the strict way."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return _isfinite(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _plain(item):
                return False
        return True
    return False


_isfinite = math.isfinite


class JsonCodec(Codec):
    """JSON as the stdlib writes and reads it, at msgspec's speed (a codec runs twice per task).

    Data made of JSON's own types goes through msgspec; anything else (int dict keys,
    subclasses, what no JSON holds) through the stdlib, which converts or refuses it as
    ``json`` does.  Decoding is strict: no NaN or infinities, integers of any size.
    """

    name = "json"

    def encode(self, data: dict[str, Any]) -> bytes:
        try:
            if _plain(data):
                return _FAST_ENCODE(data)
        except (RecursionError, UnicodeEncodeError):
            pass  # a circular or very deep value, lone surrogates: the stdlib escapes them or says why
        try:
            return _JSON_ENCODER.encode(data).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot encode as JSON: {exc}; pass only str, int, float, bool, None, "
                "lists and dicts with str keys, or use message_serializer=msgpack"
            ) from None

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Refuses NaN and infinities, as ``encode`` does: a message must re-encode once decoded."""
        try:
            return _FAST_DECODE(payload)
        except (msgspec.DecodeError, TypeError):  # lone surrogates, text: the stdlib decides, and says why
            text = payload.decode() if isinstance(payload, (bytes, bytearray, memoryview)) else payload
            return _JSON_DECODER.decode(text)


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a float")
    return value


_JSON_DECODER = json.JSONDecoder(parse_constant=_not_a_number, parse_float=_finite)


class MsgpackCodec(Codec):
    name = "msgpack"

    def encode(self, data: dict[str, Any]) -> bytes:
        try:
            return msgpack.packb(data, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot encode with msgpack: {exc}; pass only str, bytes, int, float, bool, "
                "None, lists and dicts"
            ) from None

    def decode(self, payload: bytes) -> dict[str, Any]:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)


CODECS: dict[str, type[Codec]] = {"json": JsonCodec, "msgpack": MsgpackCodec}


def get_codec(name: str | Codec | type[Codec]) -> Codec:
    """A codec instance from a name, a dotted path (``pkg.mod:Class`` or ``pkg.mod.Class``) or a class."""
    if isinstance(name, Codec):
        return name
    if isinstance(name, type) and issubclass(name, Codec):
        return name()
    if name in CODECS:
        return CODECS[name]()
    module_name, _, attr = name.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"message_serializer {name!r} is not json, msgpack or an importable codec class: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Codec)):
        raise ImproperlyConfigured(f"message_serializer {name!r} must name a subclass of pq.api.Codec")
    return cls()


class MessageCodec:
    """Encodes task dicts to signed bytes and back, refusing what is not ours."""

    def __init__(self, codec: Codec, secret: str | None = None, max_size: int | None = None) -> None:
        self.codec = codec
        self.key = secret.encode() if secret else None
        self.max_size = max_size

    def encode(self, data: dict[str, Any]) -> bytes:
        payload = self.codec.encode(data)
        if self.key is not None:
            payload = hmac.new(self.key, payload, hashlib.sha256).hexdigest().encode() + b":" + payload
        if self.max_size is not None and len(payload) > self.max_size:
            raise SerializationError(
                f"the task message is {len(payload)} bytes, over max_message_size={self.max_size}; "
                "store big inputs elsewhere and pass a reference"
            )
        return payload

    def decode(self, payload: bytes) -> dict[str, Any]:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise MessageError(f"a message must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        if self.max_size is not None and len(payload) > self.max_size:
            raise MessageError(f"message of {len(payload)} bytes is over max_message_size={self.max_size}")
        if self.key is not None:
            signature, sep, body = payload.partition(b":")
            expected = hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()
            if not sep or not hmac.compare_digest(signature, expected):
                raise MessageError("message signature is missing or invalid (is the secret the same?)")
            payload = body
        try:
            data = self.codec.decode(payload)
        except Exception as exc:  # any codec error means the bytes are not a message of ours
            raise MessageError(f"message cannot be decoded by the {self.codec.name} codec: {exc}") from None
        if not isinstance(data, dict):
            raise MessageError(f"a message must decode to a map, got {type(data).__name__}")
        return data
