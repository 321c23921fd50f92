"""`collector metrics --textfile-dir DIR`: this host's health for node_exporter, every minute.

Silent on success (cron runs it every minute); a status part it cannot read is logged as one
warning line and left out of the file, which is still written (`collector_metrics_errors`
says how many parts are missing). Only a file it cannot write fails the command.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from collector import metrics
from collector.commands import settings_from_args

log = logging.getLogger("collector.metrics")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--textfile-dir", type=Path, required=True, metavar="DIR",
                        help="node_exporter's --collector.textfile.directory; "
                             f"{metrics.TEXTFILE_NAME} is replaced there atomically")


def main(args: argparse.Namespace) -> int:
    status, errors = metrics.collect(settings_from_args(args))
    for error in errors:
        log.warning("left out of the metrics, cannot read %s", error)
    metrics.write_textfile(args.textfile_dir, metrics.exposition(status, len(errors)))
    return 0
