"""`collector receive DIR`: the main's forced command for one secondary's push key.

Runs as the receiving account from authorized_keys (see `collector.transfer.receive`); it reads no
settings file, so `--settings` is ignored here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from collector.transfer.receive import run_reporting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", type=Path,
                        help="the secondary's incoming folder, incoming_dst/<server_id>")


def main(args: argparse.Namespace) -> int:
    # rrsync's exit code goes back to sshd (and so to the rsync client) unchanged.
    return run_reporting(args.directory)
