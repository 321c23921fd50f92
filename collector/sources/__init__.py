"""The seam where a kind of stream plugs into the fleet.

Everything else (the stream's chunk files and health, send and replication, the scan, ledger,
quarantine and retention of `process`, compression, publishing, reports, alerts) is the same
whatever is captured. What differs is described by one `Source`:

* its capture transport (`prepare_capture`): reads credentials first, so a missing one fails
  before anything is touched, then builds the loop that reads the stream and hands every
  message to the stream's writer as one chunk line (with its receipt metadata on it);
* its record schema and merge (`new_index`): pass 1 and 2 of an hour's merge over chunk lines;
* its record ids (`id_line`, `parse_id`): a tweet id is an int, a Bluesky record's AT-URI
  bytes; either sorts the way its ids file is ordered (numerically, byte order);
* its output files (`outputs`, the ids file first; `published`, what goes to OSF) and its
  report columns (`report_columns`, after the per-server counts);
* an optional daily pass over the vault (`daily`), run by `process` under its lock: Bluesky
  honours deletions with it.

`source_for(settings)` is the one place that picks it: `x` (twarc) or `bluesky` (Jetstream).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias

if TYPE_CHECKING:
    from collector.alerts.notify import Notifier
    from collector.layout import HourKey
    from collector.settings import Settings
    from collector.stream.health import StreamHealth

# One record's id: an int (X tweet id) or bytes (a Bluesky AT-URI). Ids of one source are all
# of one type, and compare in their ids file's order.
RecordId: TypeAlias = Any

# Pass 2 reads a line back: (chunk number, offset, length) -> the line's bytes.
LineReader = Callable[[int, int, int], bytes]
# The stream's intake: receipt time, one chunk line (newline-terminated), carries a record.
Deliver = Callable[[float, bytes, bool], None]


class CaptureLoop(Protocol):
    """A source's transport, run on the stream's reader thread."""

    def run(self) -> None:
        """Read and deliver until the request's `stop` is set, reconnecting on failures."""

    def stall_detected(self, seconds: float) -> None:
        """Nothing arrived for `seconds` while connected: alert and reconnect."""

    def abort(self) -> None:
        """Break the current connection now (stop, or a stall)."""


@dataclass(frozen=True)
class CaptureRequest:
    """What the stream gives a transport: where to report, where to deliver, when to stop."""

    settings: Settings
    health: StreamHealth
    stop: threading.Event
    deliver: Deliver
    notifier: Notifier
    time_scale: float  # backoff waits are multiplied by this (tests shorten them)


class MergePlan(Protocol):
    """Pass 2's input: the hour's ids ascending, and how to render every other output."""

    @property
    def ids(self) -> Sequence[RecordId]: ...

    def output_rows(self, read_line: LineReader) -> list[Iterator[bytes]]:
        """The rows of each output after the ids file, in `Source.outputs` order."""

    def summary(self) -> str:
        """The hour's counts for the log line, e.g. `200000 tweets, 150000 users`."""


class HourIndex(Protocol):
    """Pass 1 of an hour's merge: one small entry per distinct record, chunk by chunk."""

    @property
    def servers(self) -> Sequence[str]: ...

    @property
    def entries(self) -> Mapping[RecordId, bytes]:
        """Per distinct record id; the first 8 bytes: the mask of servers that captured it."""

    @property
    def duplicates(self) -> int: ...

    @property
    def chunks(self) -> int: ...

    @property
    def skipped(self) -> Counter[str]: ...

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        """Index one chunk's lines (chunks in a fixed order: servers, then chunk name)."""

    def absorb(self, later: Self) -> None:
        """Take over a helper's index of the chunks that follow this one's."""

    def drop_received_earlier(self, earlier_ids: set[RecordId]) -> int:
        """Remove records the previous hour received first; returns how many."""

    def server_counts(self) -> list[int]:
        """Distinct records per server, in `servers` order."""

    def counts(self) -> Mapping[str, int]:
        """The source's own counts of the hour (`Source.count_columns`), e.g. deletes."""

    def minute_counts(self) -> dict[str, dict[int, int]]:
        """Distinct records per server and minute of receipt (the coverage plot)."""

    def plan(self) -> MergePlan:
        """The order and locations pass 2 renders from."""


@dataclass(frozen=True)
class OutputFile:
    suffix: str  # the file is `<day>_<hour>_<suffix>` in the vault's day folder
    columns: tuple[str, ...] = ()  # the CSV header; none for the ids file


@dataclass(frozen=True)
class Source:
    """One kind of stream, as the fleet sees it (see the module docstring)."""

    name: str
    record_name: str  # what one record is called in progress lines ("tweets")
    outputs: tuple[OutputFile, ...]  # the ids file first
    skip_reasons: tuple[str, ...]  # why a line was not merged; each is a report column
    max_servers: int
    prepare_capture: Callable[[Settings], Callable[[CaptureRequest], CaptureLoop]]
    new_index: Callable[[Sequence[str]], HourIndex]
    ids_in: Callable[[bytes], set[RecordId]]  # every record id of one chunk
    id_line: Callable[[RecordId], bytes]  # one line of the ids file, newline-terminated
    parse_id: Callable[[bytes], RecordId | None]  # an ids file's line (no newline); None: no id
    published: tuple[str, ...] = ("IDs.txt.xz",)  # output suffixes that go to OSF
    count_columns: tuple[str, ...] = ()  # the index's own counts, first of the report's extras
    # Work on the vault once a local day (settings, now) -> one line for the log.
    daily: Callable[[Settings, datetime], str] | None = None

    @property
    def report_columns(self) -> tuple[str, ...]:
        """The day report's columns after the per-server counts, total and diff."""
        return (*self.count_columns, "duplicates", "chunks", *self.skip_reasons, "quarantined")

    def output_paths(self, vault: Path, hour: HourKey) -> tuple[Path, ...]:
        folder = vault / hour.day
        return tuple(folder / f"{hour.file_prefix}_{output.suffix}" for output in self.outputs)


def source_named(name: str) -> Source:
    """The source called `name` (a helper process is told the name, not the object)."""
    if name == "x":
        from collector.sources.x import X_SOURCE

        return X_SOURCE
    if name == "bluesky":
        from collector.sources.bluesky import BLUESKY_SOURCE

        return BLUESKY_SOURCE
    raise ValueError(f"unknown source {name!r}")


def source_for(settings: Settings) -> Source:
    """The source this host captures and merges (`source` in its settings)."""
    return source_named(settings.source)
