"""Never fewer ids: an hour's published IDs file is only replaced by a merge that holds them all.

The only ids a new merge may lack are those the previous hour's tail received first (the
hour-of-first-receipt rule moved them, legitimately). Otherwise the outputs are kept, the
ledger records `fewer_ids`, and the team is alerted.
"""

from __future__ import annotations

import logging
import lzma
import os
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.layout import HourKey
from collector.sources import RecordId

log = logging.getLogger("collector.process")


# ---- the fewer-ids guard ---------------------------------------------------------------------

# Counting the missing ids stops here: the guard's decision is made at the first one, the count
# only tells the operator how bad it is, and a hostile or broken file cannot keep it reading.
MISSING_COUNT_CAP = 1_000_000
_EXAMPLES = 3


class UnreadableIds(ValueError):
    """An existing IDs file that is not one: not xz, or lines that are not ascending ids."""


@dataclass(frozen=True)
class IdComparison:
    """A published IDs file against a new merge's ids (`compare_ids`)."""

    published: int  # ids read from the published file
    missing: int  # of those, ids the merge lacks and the previous hour's tail does not excuse
    moved: int  # ids the merge lacks because the previous hour's tail received them first
    examples: tuple[RecordId, ...]  # the first few missing ids (public ids, fine to log)
    capped: bool  # counting stopped at MISSING_COUNT_CAP: `missing` is a lower bound


def compare_ids(published: Iterable[bytes], merged: Sequence[RecordId],
                moved_ok: Container[RecordId], parse_id: Callable[[bytes], RecordId | None],
                cap: int = MISSING_COUNT_CAP) -> IdComparison:
    """Which ids of a published IDs file (its lines, ascending) the new merge (`merged`,
    ascending) lacks; ids in `moved_ok` (received in the previous hour's tail) do not count
    as missing: the LOOKBACK rule moved them to the previous hour, legitimately (pure).

    One pass over both sorted sequences, holding nothing but a few counters, so the cost is
    reading the file; UnreadableIds when a line is not an id (`parse_id`, the source's
    reading of a line without its newline) with its newline, or the
    ids do not strictly ascend (so no file can make the walk longer than the merge, the
    excused ids and `cap` missing ones).
    """
    position, count = 0, len(merged)
    read = missing = moved = 0
    examples: list[RecordId] = []
    last: RecordId = None
    for line in published:
        record_id = parse_id(line[:-1]) if line.endswith(b"\n") else None
        if record_id is None:
            raise UnreadableIds(f"line {read + 1} is not an id")
        if last is not None and record_id <= last:
            raise UnreadableIds(f"line {read + 1} is not in ascending order")
        last = tweet_id = record_id
        read += 1
        while position < count and merged[position] < tweet_id:
            position += 1
        if position < count and merged[position] == tweet_id:
            position += 1
        elif tweet_id in moved_ok:
            moved += 1
        else:
            missing += 1
            if len(examples) < _EXAMPLES:
                examples.append(tweet_id)
            if missing >= cap:
                return IdComparison(read, missing, moved, tuple(examples), True)
    return IdComparison(read, missing, moved, tuple(examples), False)


@dataclass(frozen=True)
class FewerIds:
    """An hour whose new merge lacked published ids: its outputs were kept as they were."""

    hour: HourKey
    published: int
    merged: int
    missing: int
    examples: tuple[RecordId, ...]
    capped: bool

    def ledger_entry(self) -> dict[str, Any]:
        return {"published": self.published, "merged": self.merged, "missing": self.missing}

    def describe(self) -> str:
        """`12 of its 2000 ids (e.g. 1234, 1240)` (pure)."""
        at_least = "at least " if self.capped else ""
        examples = ", ".join(i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i)
                             for i in self.examples)
        return f"{at_least}{self.missing} of its {self.published} ids (e.g. {examples})"


def check_fewer_ids(hour: HourKey, ids_path: Path, merged: Sequence[RecordId],
                    moved_ok: Container[RecordId],
                    parse_id: Callable[[bytes], RecordId | None]) -> FewerIds | None:
    """Whether writing this merge would publish the hour with fewer ids than its IDs file
    holds now: a FewerIds (and one warning) if so, else None.

    Why: after a promotion, a restore, or chunks lost or quarantined, a re-merge can see
    less than the merge that was published; replacing the file would take those ids off
    OSF. Only an existing file is read (xz-decompressing a few MB, streamed: nothing but
    counters is kept). A file that cannot be read as an IDs file cannot be compared: it is
    logged and replaced by the merge, which repairs it.
    """
    try:
        with lzma.open(ids_path, "rb") as handle:
            found = compare_ids(handle, merged, moved_ok, parse_id)
    except FileNotFoundError:
        return None
    except (OSError, lzma.LZMAError, EOFError, UnreadableIds) as error:
        detail = (os.strerror(error.errno) if isinstance(error, OSError) and error.errno
                  else str(error) or type(error).__name__)
        log.warning("the existing IDs file of %s cannot be read (%s); it cannot be compared "
                    "and is replaced by the new merge", hour, detail)
        return None
    if not found.missing:
        return None
    fewer = FewerIds(hour, found.published, len(merged), found.missing, found.examples,
                     found.capped)
    log.warning("kept the published outputs of %s: the new merge lacks %s; they are not "
                "replaced until the hour's chunks change", hour, fewer.describe())
    return fewer


def fewer_ids_alert(kept: list[FewerIds], limit: int = 20) -> tuple[str, str]:
    """Subject and body of the `fewer_ids` alert, one per run (pure)."""
    first = kept[0]
    subject = (f"{len(kept)} hour{'s' if len(kept) > 1 else ''} kept their published "
               f"outputs: re-merging {first.hour} would drop {first.describe()}")
    lines = [f"- {k.hour}: the merge lacks {k.describe()}; it has {k.merged} ids"
             for k in kept[:limit]]
    if len(kept) > limit:
        lines.append(f"- ... and {len(kept) - limit} more (one log line each)")
    body = "\n".join([
        "Merging these hours again from the chunks this main holds now gave fewer ids than",
        "their published IDs files hold, so their outputs (IDs, tweets, users, report line)",
        "were left as they are: an hour is never published again with fewer ids.",
        "", *lines, "",
        "Usually some chunks the published merge used are not on this host (yet): after a",
        "promotion, a secondary that has not re-pushed its kept chunks, or a chunk moved to",
        "the quarantine. Each hour is merged again as soon as its chunks change; nothing is",
        "retried before that. Its entry in state_dir/process_ledger.json says `fewer_ids`.",
    ])
    return subject, body
