"""The port file the doubles write when started from the command line (the lab reads it)."""

from __future__ import annotations

import os
from pathlib import Path


def write_port_file(path: Path, port: int) -> None:
    """Write `port` whole or not at all: a reader never sees a half-written number."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, path)
