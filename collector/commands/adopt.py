"""`collector adopt`: take over the replica tree this host holds when it becomes the main.

Thin: the work (and the safety against a hostile replica tree) lives in `collector.transfer.adopt`.
The role runs it as the collector user after every configuration of the main; it is
idempotent and a no-op when nothing was replicated here.
"""

from __future__ import annotations

import argparse

from collector.commands import settings_from_args
from collector.transfer.adopt import adopt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: what to adopt is entirely given by `replica_dst` and the settings."""
    del parser


def main(args: argparse.Namespace) -> int:
    adopt(settings_from_args(args))
    return 0
