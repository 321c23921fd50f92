"""`collector upload [--hour YYYY-mm-ddTHH]`: publish new IDs files and day reports on OSF."""

from __future__ import annotations

import argparse
import logging

from collector.commands import settings_from_args
from collector.layout import HourKey
from collector.osf import upload_to_osf

log = logging.getLogger("collector.upload")


def _hour(text: str) -> HourKey:
    try:
        return HourKey.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hour", type=_hour, metavar="YYYY-mm-ddTHH",
                        help="only this hour's IDs file and its day's report "
                             "(checked on OSF even if uploaded before)")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    upload_to_osf(settings, args.hour)
    return 0
