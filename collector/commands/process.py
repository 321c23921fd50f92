"""`collector process [--hour YYYY-mm-ddTHH] [--force]`: merge due hours into the vault."""

from __future__ import annotations

import argparse
import logging

from collector.commands import argument_type, settings_from_args
from collector.errors import CollectorError
from collector.layout import HourKey
from collector.process.run import process

log = logging.getLogger("collector.process")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hour", type=argument_type(HourKey.parse), metavar="YYYY-mm-ddTHH",
                        help="process only this hour (again, even if done); `HHb` names the "
                             "repeated hour of a fall-back day")
    parser.add_argument("--force", action="store_true",
                        help="process the hour even if it is not due yet (its closed chunks)")


def main(args: argparse.Namespace) -> int:
    if args.force and args.hour is None:
        raise CollectorError("--force needs --hour")
    result = process(settings_from_args(args), hour=args.hour, force=args.force)
    timings = result.timings
    log.info("done: %d hours processed, %d hours of raw chunks removed "
             "(reading %.1f s, merging %.1f s, rendering %.1f s, compressing %.1f s)",
             len(result.hours), result.pruned_hours, timings.reading, timings.merging,
             timings.rendering, timings.compressing)
    return 0
