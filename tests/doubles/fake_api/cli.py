"""The fake API's command line, as the lab starts it (`python -m tests.doubles.fake_api`):
serve until SIGTERM or SIGINT, then exit 0; the chosen port is printed and, with
`--port-file`, written whole for the lab to read.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tests.doubles.fake_api.server import FakeStreamAPI
from tests.doubles.portfile import write_port_file


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    # prog: the name usage lines and errors showed when this was the module fake_api.py
    parser = argparse.ArgumentParser(prog="fake_api.py",
                                     description="Fake X API v2 sampled stream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", required=True, help="comma-separated bearer tokens")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="seconds")
    parser.add_argument("--slots", type=int, default=1, help="connections per token")
    parser.add_argument("--attempt-limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=900.0, help="budget window, seconds")
    parser.add_argument("--port-file", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    api = FakeStreamAPI(
        [token for token in args.tokens.split(",") if token], rate=args.rate,
        heartbeat_interval=args.heartbeat, slots=args.slots,
        attempt_limit=args.attempt_limit, window_seconds=args.window, host=args.host,
        port=args.port,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    api.start()
    if args.port_file is not None:
        write_port_file(args.port_file, api.port)
    print(api.port, flush=True)
    while not done.wait(1):
        pass
    api.stop()
    return 0
