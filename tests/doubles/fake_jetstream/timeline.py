"""One instance's view of the universe: its own `time_us` for each event (the due time plus
the instance's offset and a per-event jitter, so `time_us` goes backwards now and then, as in
the real window), what it still retains (its lookback window), what it never had (`miss`
faults), and where a connection with a given cursor starts.

An instance sends event i once it is due and once its own `time_us` has passed, so a
`time_us` a client holds is never in the instance's future.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

from tests.doubles.fake_jetstream.ids import number
from tests.doubles.fake_jetstream.universe import Universe


@dataclass(frozen=True)
class Start:
    """Where a connection starts: `index`, and whether the cursor was clamped to the oldest
    retained event or meant the live tail (no cursor, or one in the future)."""

    index: int
    clamped: bool
    live: bool


class Timeline:
    """Stamps, retention and gaps of one instance (thread-safe: faults arrive from outside)."""

    def __init__(self, universe: Universe, name: str, *, offset_us: int, jitter_us: int,
                 lookback_seconds: float) -> None:
        if jitter_us < 0 or lookback_seconds <= 0:
            raise ValueError("jitter_us >= 0 and lookback_seconds > 0 are required")
        self.universe = universe
        self.name = name
        self.offset_us = offset_us
        self.jitter_us = jitter_us
        self._lookback_us = round(lookback_seconds * 1_000_000)
        self._lock = threading.Lock()
        self._missing: list[list[int]] = []  # sorted, disjoint inclusive runs
        self._starts: list[int] = []  # the first index of each run, for bisect

    @property
    def lookback_seconds(self) -> float:
        return self._lookback_us / 1_000_000

    def set_lookback(self, seconds: float) -> None:
        """The `clamp` fault: from now on the instance keeps only `seconds` of events."""
        self._lookback_us = round(seconds * 1_000_000)

    def stamp(self, index: int) -> int:
        """This instance's `time_us` of event `index`."""
        jitter = number(self.universe.seed, "jitter", self.name, index) % (self.jitter_us + 1)
        return self.universe.due_us(index) + self.offset_us + jitter

    def ready_us(self, index: int) -> int:
        """When this instance can send event `index`: due, and its own time_us passed."""
        return max(self.universe.due_us(index), self.stamp(index))

    def floor(self, now_us: int) -> int:
        """The oldest index still retained (lookback from now, never before the epoch)."""
        return self.universe.index_at_us(now_us - self._lookback_us)

    def resolve(self, cursor: int | None, now_us: int) -> Start:
        """Where a connection asking for `cursor` (unix microseconds) starts now."""
        if cursor is None or cursor > now_us:
            return Start(self.universe.index_at_us(now_us), clamped=False, live=True)
        first = self.first_at_or_after(cursor)
        floor = self.floor(now_us)
        if first < floor:
            return Start(floor, clamped=True, live=False)
        return Start(first, clamped=False, live=False)

    def first_at_or_after(self, cursor: int) -> int:
        """The first index (in stream order) whose time_us is at least `cursor`."""
        # stamp(i) lies in [due(i) + offset, due(i) + offset + jitter]: start where it could.
        index = self.universe.index_at_us(cursor - self.offset_us - self.jitter_us)
        while self.stamp(index) < cursor:
            index += 1
        return index

    # ---- what this instance never had -------------------------------------------------------

    def add_missing(self, first: int, last: int) -> None:
        """From now on this instance never had events first..last (inclusive)."""
        with self._lock:
            runs = [*self._missing, [first, last]]
            runs.sort()
            merged: list[list[int]] = []
            for run in runs:
                if merged and run[0] <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], run[1])
                else:
                    merged.append(list(run))
            self._missing = merged
            self._starts = [run[0] for run in merged]

    def is_missing(self, index: int) -> bool:
        with self._lock:
            runs, starts = self._missing, self._starts
        position = bisect.bisect_right(starts, index) - 1
        return position >= 0 and index <= runs[position][1]

    def missing(self) -> list[list[int]]:
        with self._lock:
            return [list(run) for run in self._missing]
