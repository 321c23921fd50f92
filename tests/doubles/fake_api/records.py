"""What the fake sent: one record per stream request, for `connection_log()`, `sent_whole()`
and `GET /_control/log`.

This record is the oracle of every stream test (which messages went out whole, on which
connection, with which status and faults), so it is kept apart from the code that sends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


def expand_runs(runs: Iterable[Iterable[int]]) -> list[int]:
    """Message indices from inclusive `[first, last]` runs (the log's compact form)."""
    indices: list[int] = []
    for first, last in (tuple(run) for run in runs):
        indices.extend(range(first, last + 1))
    return indices


@dataclass
class Record:
    """What one stream request got; `whole_runs` are inclusive index runs in send order."""

    id: int
    token: str | None
    peer: str
    query: str
    start: float
    end: float | None = None
    status: int | None = None
    backfill_minutes: int = 0
    first_index: int | None = None
    whole_runs: list[list[int]] = field(default_factory=list)
    whole_count: int = 0
    partial: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def add_whole(self, first: int, count: int) -> None:
        if self.whole_runs and self.whole_runs[-1][1] == first - 1:
            self.whole_runs[-1][1] = first + count - 1
        else:
            self.whole_runs.append([first, first + count - 1])
        self.whole_count += count

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["whole_runs"] = [list(run) for run in self.whole_runs]
        return record


class Records:
    """Every stream request so far, oldest first, numbered from 1 in arrival order."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._records: list[Record] = []

    def add(self, record: Record) -> None:
        """Give `record` the next id and keep it."""
        with self._lock:
            record.id = len(self._records) + 1
            self._records.append(record)

    def to_json(self) -> list[dict[str, Any]]:
        """Every record as a JSON-ready dict."""
        with self._lock:
            return [record.to_json() for record in self._records]

    def sent_whole(self, token: str) -> list[int]:
        """Indices of the messages sent whole to `token`, all its connections in order."""
        with self._lock:
            runs = [run for r in self._records if r.token == token for run in r.whole_runs]
        return expand_runs(runs)
