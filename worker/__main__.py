"""`python -m worker [run | submit FILE | results | demo]`."""

import argparse
import sys
import time
from pathlib import Path

from worker.errors import ClusterMismatch
from worker.jsonio import dumps
from worker.service.cluster import load_conf
from worker.settings import Settings, load_settings


def submit(settings: Settings, request_file: Path) -> int:
    """Send a request file to the work queue, as the README's aws CLI command does."""
    from worker.local.client import ApiClient

    message_id = ApiClient(settings).send(request_file.read_text())
    print(f"sent {request_file} as message {message_id}")
    return 0


def results(settings: Settings, count: int | None, timeout_s: float | None) -> int:
    """Print responses as they arrive on the results queue (subscribed to the topic)."""
    from worker.local.client import ApiClient

    client = ApiClient(settings)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    printed = 0
    while (count is None or printed < count) and (deadline is None or time.monotonic() < deadline):
        for response in client.published(wait_s=5):
            print(dumps(response).decode(), flush=True)
            printed += 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="serve the work queue (the default)")
    submit_parser = commands.add_parser("submit", help="send a request file to the work queue")
    submit_parser.add_argument("file", type=Path)
    results_parser = commands.add_parser("results", help="print responses as they arrive")
    results_parser.add_argument("--count", type=int, help="stop after this many responses")
    results_parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    demo_parser = commands.add_parser("demo", help="prepare the sample and run every task")
    demo_parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)

    settings = load_settings()
    load_conf(Path(settings.conf_dir))
    if args.command == "submit":
        return submit(settings, args.file)
    if args.command == "results":
        return results(settings, args.count, args.timeout)
    if args.command == "demo":
        from worker.local.demo import run_demo

        return run_demo(settings, args.out)
    from worker.service.app import serve

    try:
        return serve(settings)
    except ClusterMismatch as mismatch:
        print(f"refusing the Dask cluster: {mismatch}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
