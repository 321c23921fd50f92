"""The fake's stderr log, in one place so that no line ever carries a bearer token.

Every part logs through one `Log`: it stamps the time, writes each line in a single call (so
threads never interleave) and names tokens only by their position in the configured list.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime


class Log:
    """Time-stamped lines on stderr, unless quiet."""

    def __init__(self, tokens: tuple[str, ...], quiet: bool) -> None:
        self.tokens = tokens
        self.quiet = quiet

    def label(self, token: str | None) -> str:
        """A token's position in the configured list: logs never carry the token itself."""
        return "unauthenticated" if token is None else f"token#{self.tokens.index(token) + 1}"

    def __call__(self, message: str) -> None:
        if not self.quiet:
            stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
            sys.stderr.write(f"{stamp} fake_api: {message}\n")  # one write: no interleaving
            sys.stderr.flush()
