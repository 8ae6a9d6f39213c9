"""The embedded servers' processes (moto, Redis). Each runs in a session of its own, so that a
terminal's Ctrl-C or a signal to the worker's process group reaches the worker alone, which
stops them last; and each stops when its standard input closes: when the worker stops it, or
when the worker dies, so none outlives it."""

import subprocess
import sys


def start_child(module: str, *arguments: str) -> subprocess.Popen:
    """`python -m module arguments...` in a session of its own, its standard input a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_child(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """Close the child's standard input and wait for it to end (killed after `timeout_s`)."""
    if process.poll() is None:
        process.stdin.close()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_stdin_closes() -> None:
    """In the child: return once the parent has closed our standard input, or died."""
    sys.stdin.buffer.read()
