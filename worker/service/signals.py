"""SIGINT and SIGTERM for the life of `python -m worker run`: during start-up they unwind it,
stopping whatever has started; once serving, they ask the loop to stop."""

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupInterrupted(BaseException):
    """Raised in the main thread by a stop signal during start-up. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""


class StopSignals:
    """Installs its handlers on entering and restores the previous ones on leaving.

    A stop signal during start-up raises StartupInterrupted once, so that the `with` blocks
    inside unwind and stop in reverse what they had started (this one then swallows it); later
    signals are ignored until `serving` is called. Once serving, a signal calls the loop's stop
    in a thread of its own: the main thread may hold a lock that stop needs when it arrives.
    """

    def __init__(self) -> None:
        self._stop: Callable[[], None] | None = None
        self._interrupted = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for stop_signal in STOP_SIGNALS:
            self._previous[stop_signal] = signal.signal(stop_signal, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        for stop_signal, handler in self._previous.items():
            signal.signal(stop_signal, handler)
        if exc_type is StartupInterrupted:
            log.info("%s while starting: stopped what had started", exc)
            return True
        return False

    def serving(self, stop: Callable[[], None]) -> None:
        """From now on, a stop signal calls `stop`."""
        self._stop = stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop is not None:
            log.info("%s: stopping", name)
            threading.Thread(target=self._stop, name="stop").start()
        elif not self._interrupted:
            self._interrupted = True
            raise StartupInterrupted(name)
        else:
            log.info("%s: already stopping", name)
