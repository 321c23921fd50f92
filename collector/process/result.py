"""What `collector process` did: the hours written, the time spent, what was kept back."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.layout import HourKey
from collector.process.fewer_ids import FewerIds
from collector.process.quarantine import QuarantinedEntry
from collector.report.day import HourLine

# ---- processing one hour ---------------------------------------------------------------------

@dataclass
class Timings:
    """Where the time went (seconds, wall clock), summed over the hours processed."""

    reading: float = 0.0  # pass 1: reading chunk files from disk
    merging: float = 0.0  # pass 1: parsing JSON, dropping duplicates; then ordering
    rendering: float = 0.0  # pass 2: reading kept lines back, rendering rows (overlaps xz)
    compressing: float = 0.0  # pass 2 as a whole: rendering, compressing, writing the files

    def as_dict(self) -> dict[str, float]:
        return {"reading": self.reading, "merging": self.merging,
                "rendering": self.rendering, "compressing": self.compressing}


@dataclass
class HourResult:
    hour: HourKey
    records: int  # distinct records (tweets) merged
    summary: str  # the counts for the log line (`MergePlan.summary`)
    line: HourLine
    fewer_ids: FewerIds | None = None  # set: nothing was written (see check_fewer_ids)


@dataclass
class ProcessResult:
    hours: list[HourResult] = field(default_factory=list)  # hours whose outputs were written
    pruned_hours: int = 0
    timings: Timings = field(default_factory=Timings)
    quarantined: list[QuarantinedEntry] = field(default_factory=list)
    # Hours merged but not written: their published IDs file holds ids the merge lacks.
    fewer_ids: list[FewerIds] = field(default_factory=list)
    daily: str | None = None  # the source's daily pass, when it ran (`process.daily`)
