"""A custom codec (oxalis's TaskCodec): JSON with the bytes reversed."""
import json

from pq.api import Codec


class ReversedJson(Codec):
    name = "reversed-json"

    def encode(self, data):
        return json.dumps(data).encode()[::-1]

    def decode(self, payload):
        return json.loads(bytes(payload)[::-1])
