"""The `collector` command: parse arguments, run one subcommand, report failures in one line.

This is the only place that catches `CollectorError`: cron, systemd and Ansible see a
non-zero exit and a single line on stderr, never a traceback, for anything a user can fix.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from collector import __version__
from collector.errors import CollectorError

# Each subcommand is a module with `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "stream": ("collector.commands.stream", "capture the sampled stream into minute chunks"),
    "status": ("collector.commands.status", "tell the health of this host"),
    "send": ("collector.commands.send", "push closed chunks to the main (secondary)"),
    "receive": ("collector.commands.receive",
                "receive one secondary's push: the forced command of its key (main)"),
    "replicate": ("collector.commands.replicate",
                  "copy the main's own chunks, departed servers' chunks and vault to every "
                  "secondary (main)"),
    "adopt": ("collector.commands.adopt",
              "take over the replicas this host holds when it becomes the main (main)"),
    "process": ("collector.commands.process", "merge every due hour of all servers into the vault"),
    "upload": ("collector.commands.upload", "upload new IDs files and day reports to OSF"),
    "report": ("collector.commands.report", "the day's report table and coverage plot"),
    "metrics": ("collector.commands.metrics",
                "write this host's health as Prometheus metrics for node_exporter's textfile "
                "collector"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def setup_logging(verbose: bool) -> None:
    """One event per line on stderr (journald adds its own time stamps under systemd)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # twarc and urllib3 log every retry at INFO with full URLs; ours are enough.
    for noisy in ("twarc", "urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, CommandModule]]:
    parser = argparse.ArgumentParser(
        prog="collector",
        description="Redundant collection of the X API v2 sampled stream.",
    )
    parser.add_argument("--settings", metavar="PATH",
                        help="server_settings.txt (default: $COLLECTOR_SETTINGS, "
                             "else /etc/collector/server_settings.txt)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules: dict[str, CommandModule] = {}
    for name, (module_name, summary) in COMMANDS.items():
        module = cast(CommandModule, importlib.import_module(module_name))
        sub = subparsers.add_parser(name, help=summary, description=summary)
        module.add_arguments(sub)
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return modules[args.command].main(args)
    except CollectorError as error:
        print(f"collector {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"collector {args.command}: interrupted", file=sys.stderr)
        return 130
