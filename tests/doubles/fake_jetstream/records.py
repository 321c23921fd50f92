"""What an instance sent: one record per WebSocket connection, for `connection_log()` and
`GET /_control/log`.

This record is the oracle of every test and of the lab's fault suite (which events went out
whole, on which connection, from which start, and how it ended), so it is kept apart from
the code that sends.

What went out whole is kept small as inclusive runs `[[first, last], ...]` in send order,
over the connection's own filtered view: a run steps over the events its subscription does
not want (`collections`, `dids`), so a posts-only connection has one run, not one per post;
every event of a run that the subscription wants was sent whole. A run never steps over an
event that was wanted but not sent (one the instance never had, or one skipped for
`maxMessageSizeBytes`), and a repeat shows as a run that goes back.
`oracle.connection_indices` expands a record into the indices sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


def expand_runs(runs: Iterable[Iterable[int]]) -> list[int]:
    """Event indices from inclusive `[first, last]` runs (the log's compact form)."""
    indices: list[int] = []
    for first, last in (tuple(run) for run in runs):
        indices.extend(range(first, last + 1))
    return indices


@dataclass
class ConnectionRecord:
    """One `/subscribe` connection. `cursor` is what was asked; `start_index` and
    `start_time_us` where the instance started (`clamped`: an old cursor moved up to the
    oldest retained event; `live`: no cursor or a future one). `ended` says how it ended:
    `client closed <code>`, `client went away`, `closed <code> <reason>` (close fault),
    `dropped mid-frame`, `server stopped` or `error: ...`."""

    id: int
    peer: str
    path: str
    start: float
    cursor: int | None
    compress: bool
    collections: list[str]
    dids: list[str]
    max_message_size: int
    start_index: int
    start_time_us: int
    clamped: bool
    live: bool
    end: float | None = None
    ended: str | None = None
    whole_runs: list[list[int]] = field(default_factory=list)
    whole_count: int = 0
    skipped_too_big: int = 0
    partial: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def add_whole(self, index: int, *, joins: bool = False) -> None:
        """Event `index` went out whole; `joins`: every event since the last run's end was
        either sent or not wanted, so the run may step over them."""
        runs = self.whole_runs
        if runs and (runs[-1][1] == index - 1 or (joins and index > runs[-1][1])):
            runs[-1][1] = index
        else:
            runs.append([index, index])
        self.whole_count += 1

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["whole_runs"] = [list(run) for run in self.whole_runs]
        return record


class Records:
    """Every connection so far, oldest first, numbered from 1."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[ConnectionRecord] = []

    def add(self, record: ConnectionRecord) -> ConnectionRecord:
        with self._lock:
            record.id = len(self._records) + 1
            self._records.append(record)
        return record

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [record.to_json() for record in self._records]
