"""Notifications to the platform's browsers: socket.io events published through Redis as the
socket.io-redis adapter of the platform's API reads them (the packets of PyPI
`socket.io-emitter`), on the channel `socket.io#/#` to every socket of the namespace."""

from typing import Any

import msgpack
import redis

from worker.errors import TransportError

CHANNEL = "socket.io#/#"
# The adapter relays packets of any uid but its own; the platform's emitter calls itself this.
EMITTER_UID = "emitter"
EVENT = 2


def packet(event: str, payload: Any) -> bytes:
    """The Redis message that makes the adapter emit `event` with `payload`.

    Strings are packed as msgpack str (use_bin_type=False, as the emitter's legacy msgpack
    did): a result's base64 text must reach the browser as a string, not a binary attachment.
    """
    message = [
        EMITTER_UID,
        {"data": [event, payload], "type": EVENT, "nsp": "/"},
        {"flags": "", "rooms": ""},
    ]
    return msgpack.packb(message, use_bin_type=False)


class SocketEmitter:
    """Emits socket.io events through one Redis server."""

    def __init__(self, redis_url: str):
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)

    def emit(self, event: str, payload: Any) -> None:
        try:
            self._redis.publish(CHANNEL, packet(event, payload))
        except redis.RedisError as error:
            raise TransportError("redis", "PUBLISH", str(error)) from error

    def close(self) -> None:
        self._redis.close()
