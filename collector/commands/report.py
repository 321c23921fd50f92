"""`collector report [--day YYYY-mm-dd] [--send]`: print the day's table, save the coverage
plot next to the day's report, and with `--send` mail both (cron runs it at 02:00)."""

from __future__ import annotations

import argparse
import sys

from collector.commands import argument_type, settings_from_args
from collector.report.summary import build_report, parse_day, send_report, write_plot, yesterday


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--day", type=argument_type(parse_day), metavar="YYYY-mm-dd",
                        help="the day to report on (default: yesterday in the settings' "
                             "timezone)")
    parser.add_argument("--send", action="store_true",
                        help="email the table with the plot attached")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    day = args.day or yesterday(settings.timezone)
    report = build_report(settings, day)
    plot_path = write_plot(settings, report)
    sys.stdout.write(report.text + f"\nplot: {plot_path}\n")
    if args.send:
        recipients = send_report(settings, report)
        sys.stdout.write(f"sent to {recipients}\n")
    return 0
