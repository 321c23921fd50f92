"""One module per subcommand; each keeps its `main()` thin and calls a typed function."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from collector.settings import Settings, load_settings, resolve_settings_path

T = TypeVar("T")


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type=` from a parser that raises ValueError.

    argparse prints the message of an ArgumentTypeError only, so the reason reaches the user.
    """

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings file named on the command line, in the environment, or by default."""
    return load_settings(resolve_settings_path(args.settings))
