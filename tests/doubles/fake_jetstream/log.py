"""The instance's stderr log: time-stamped lines naming the instance, one write per line so
threads and the instances of one process never interleave."""

from __future__ import annotations

import sys
from datetime import UTC, datetime


class Log:
    """Time-stamped lines on stderr, unless quiet."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name = name
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
            sys.stderr.write(f"{stamp} fake_jetstream[{self.name}]: {message}\n")
            sys.stderr.flush()
