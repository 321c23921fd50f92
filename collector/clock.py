"""Time as the state files and ledgers record it, in one format."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now_text() -> str:
    """Now in UTC as ISO 8601 to the second (`2026-12-06T21:30:00+00:00`), the format of
    every `*_at` field the collector writes and `collector status` reads back."""
    return datetime.now(UTC).isoformat(timespec="seconds")
