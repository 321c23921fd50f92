"""`collector upload [--hour YYYY-mm-ddTHH]`: publish new IDs files and day reports on OSF.

Being the main's hourly cron job, it also mails the alerts queued while the mail server was
down (`collector.alerts.notify.deliver_queued_alerts`), whether or not the upload itself worked.
"""

from __future__ import annotations

import argparse
import logging

from collector.alerts.notify import deliver_queued_alerts
from collector.commands import argument_type, settings_from_args
from collector.layout import HourKey
from collector.publish.upload import upload_to_osf

log = logging.getLogger("collector.upload")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hour", type=argument_type(HourKey.parse), metavar="YYYY-mm-ddTHH",
                        help="only this hour's IDs file and its day's report "
                             "(checked on OSF even if uploaded before)")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        upload_to_osf(settings, args.hour)
    finally:
        deliver_queued_alerts(settings)
    return 0
