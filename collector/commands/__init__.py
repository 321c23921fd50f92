"""One module per subcommand; each keeps its `main()` thin and calls a typed function."""

from __future__ import annotations

import argparse

from collector.settings import Settings, load_settings, resolve_settings_path


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings file named on the command line, in the environment, or by default."""
    return load_settings(resolve_settings_path(args.settings))
