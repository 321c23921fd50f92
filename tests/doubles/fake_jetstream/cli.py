"""The fake Jetstream's command line, as the lab starts each instance
(`python -m tests.doubles.fake_jetstream`): serve until SIGTERM or SIGINT, then exit 0; the
chosen port is printed and, with `--port-file`, written whole for the lab to read.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from tests.doubles.fake_jetstream.server import DEFAULT_LOOKBACK, FakeJetstream
from tests.doubles.portfile import write_port_file


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fake_jetstream",
                                     description="Fake Bluesky Jetstream (v1 /subscribe).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="jetstream", help="instance name (logs, jitter)")
    parser.add_argument("--epoch", type=float, default=None,
                        help="unix seconds event 0 is due (default: now)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--lookback", type=float, default=DEFAULT_LOOKBACK,
                        help="seconds of events kept for cursor replay")
    parser.add_argument("--offset-us", type=int, default=None,
                        help="this instance's time_us offset (default: from the name)")
    parser.add_argument("--jitter-us", type=int, default=30_000)
    parser.add_argument("--comma-lists", action="store_true",
                        help="accept comma lists in wantedCollections/wantedDids")
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    instance = FakeJetstream(
        name=args.name, epoch=time.time() if args.epoch is None else args.epoch,
        seed=args.seed, rate=args.rate, lookback_seconds=args.lookback,
        offset_us=args.offset_us, jitter_us=args.jitter_us, host=args.host, port=args.port,
        comma_lists=args.comma_lists, quiet=args.quiet)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    instance.start()
    if args.port_file is not None:
        write_port_file(args.port_file, instance.port)
    print(instance.port, flush=True)
    while not done.wait(1):
        pass
    instance.stop()
    return 0
