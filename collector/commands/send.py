"""`collector send`: push this secondary's closed chunks to the main (hourly, from cron)."""

from __future__ import annotations

import argparse

from collector.alerts.notify import deliver_queued_alerts
from collector.commands import settings_from_args
from collector.transfer.send import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IO_TIMEOUT,
    DEFAULT_RUN_TIMEOUT,
    send,
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_positive, default=int(DEFAULT_RUN_TIMEOUT),
                        metavar="SECONDS", help="give up on the whole push after this long "
                        f"(default {int(DEFAULT_RUN_TIMEOUT)})")
    parser.add_argument("--io-timeout", type=_positive, default=DEFAULT_IO_TIMEOUT,
                        metavar="SECONDS", help="give up when no data moves for this long "
                        f"(default {DEFAULT_IO_TIMEOUT})")
    parser.add_argument("--connect-timeout", type=_positive, default=DEFAULT_CONNECT_TIMEOUT,
                        metavar="SECONDS", help=f"ssh connect timeout "
                        f"(default {DEFAULT_CONNECT_TIMEOUT})")
    parser.add_argument("--bwlimit", type=_positive, default=None, metavar="KBPS",
                        help="limit the bandwidth used, in KiB/s (default: no limit)")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        send(settings, run_timeout=float(args.timeout), io_timeout=args.io_timeout,
             connect_timeout=args.connect_timeout, bwlimit_kbps=args.bwlimit)
    finally:
        # A secondary's hourly job: alerts queued while mail was down go out now.
        deliver_queued_alerts(settings)
    return 0
